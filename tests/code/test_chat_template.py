"""Chat builds prompts exactly as training did, and screens every turn before the model.

A character-level stub tokenizer stands in for Gemma's here (which pieces go where is what
matters); tests/model/test_chat.py checks token ids and truncation against the tokenize stage
with the real tokenizer, and the console script with a real model.
"""

from __future__ import annotations

import pytest

from maeum.chat import ChatSession, clean_reply
from maeum.config import load_params
from maeum.corpus import dialogues_frame, read_corpus_file
from maeum.dialogue import END_OF_TURN, MODEL, USER, build_prompt
from tasks import safety
from tasks.preprocess import build_examples
from tests.conftest import REPO, SAMPLE_DIR

MAX_HISTORY_TURNS = load_params(REPO / "params.yaml").preprocess.max_history_turns


class CharTokenizer:
    """One id per character; special pieces get ids no character has."""

    SPECIAL = {"<bos>": 1_000_002, END_OF_TURN: 1_000_107}

    def token_to_id(self, piece):
        return self.SPECIAL[piece]

    def __call__(self, texts):
        return [[ord(c) for c in text] for text in texts]


class ScriptedGenerator:
    """Replies with the given texts in order and records every prompt it was called with."""

    def __init__(self, *replies):
        self.replies = list(replies)
        self.calls = []

    def generate_ids(self, prompts):
        self.calls.append([list(p) for p in prompts])
        return [[ord(c) for c in self.replies.pop(0)]]

    def detokenize(self, ids):
        return "".join(map(chr, ids))


def session(generator, max_history_turns=MAX_HISTORY_TURNS, max_prompt_tokens=10_000):
    return ChatSession(generator, CharTokenizer(), max_history_turns, max_prompt_tokens)


@pytest.fixture(scope="module")
def validation_dialogues():
    path = SAMPLE_DIR / "Validation.json"
    return dialogues_frame(read_corpus_file(path), str(path))


@pytest.fixture(scope="module")
def validation_examples(validation_dialogues):
    return build_examples(validation_dialogues, MAX_HISTORY_TURNS)


def replayable_dialogues(examples):
    """Dialogues with no crisis message (those get the crisis response instead of the corpus reply)."""
    for _, dialogue in examples.groupby("talk_id", sort=False):
        if not any(safety.screen(text).crisis for text in dialogue["user_text"]):
            yield dialogue.sort_values("turn")


@pytest.mark.parametrize("window", [MAX_HISTORY_TURNS, 2])  # params.yaml's, and one that cuts third turns
def test_chat_prompts_are_the_preprocess_prompts_turn_by_turn(validation_dialogues, window):
    compared = full_windows = 0
    for dialogue in replayable_dialogues(build_examples(validation_dialogues, window)):
        chat = session(ScriptedGenerator(*dialogue["response_text"]), max_history_turns=window)
        for row in dialogue.itertuples():
            turn = chat.respond(row.user_text)
            assert turn.prompt.text == row.prompt
            assert list(turn.prompt.history_blocks) == list(row.history_blocks)
            compared += 1
            full_windows += len(row.history_blocks) == window
    assert compared >= 50 and full_windows >= 10


def test_history_window_keeps_only_the_latest_turns():
    chat = session(ScriptedGenerator("응", "그랬구나", "많이 힘들었겠다"), max_history_turns=2)
    for message in ("안녕", "오늘 힘들었어", "회사에서 혼났어"):
        turn = chat.respond(message)
    assert turn.prompt.history_blocks == build_prompt([(USER, "오늘 힘들었어"), (MODEL, "그랬구나")], "x", 2).history_blocks
    assert chat.history[-2:] == [(USER, "회사에서 혼났어"), (MODEL, "많이 힘들었겠다")]


def test_prompt_ids_start_with_bos_and_end_with_the_model_header():
    generator = ScriptedGenerator("그랬구나")
    session(generator).respond("요즘 너무 지쳐")
    (prompt,) = generator.calls[0]
    assert prompt[0] == CharTokenizer.SPECIAL["<bos>"]
    assert "".join(map(chr, prompt[1:])) == build_prompt([], "요즘 너무 지쳐", MAX_HISTORY_TURNS).text


def test_crisis_message_gets_the_crisis_response_and_the_model_is_not_called():
    generator = ScriptedGenerator("절대 보이면 안 되는 답")
    chat = session(generator)
    turn = chat.respond("요즘 매일 죽고 싶다는 생각만 해요")
    assert generator.calls == []
    assert turn.reply == safety.CRISIS_RESPONSE and "109" in turn.reply and "1388" in turn.reply
    assert turn.crisis and turn.model_reply is None and turn.screening.crisis
    assert chat.history == [(USER, "요즘 매일 죽고 싶다는 생각만 해요"), (MODEL, safety.CRISIS_RESPONSE)]


def test_turn_after_a_crisis_sees_the_message_and_the_crisis_response():
    generator = ScriptedGenerator("이야기해 줘서 고마워요")
    chat = session(generator)
    chat.respond("죽고 싶어")
    turn = chat.respond("고마워")
    assert len(generator.calls) == 1 and not turn.crisis
    assert turn.prompt.history_blocks[-1].startswith("<start_of_turn>model\n" + safety.CRISIS_RESPONSE)
    assert turn.reply == "이야기해 줘서 고마워요"


def test_harmful_model_reply_is_replaced_and_never_reaches_the_history():
    harmful = safety.load_eval_set()["main"]["reply_harmful"][0]
    chat = session(ScriptedGenerator(harmful))
    turn = chat.respond("요즘 너무 지쳐")
    assert turn.replaced and turn.reply == safety.HARMFUL_REPLY_REPLACEMENT and "109" in turn.reply
    assert turn.model_reply == harmful
    assert all(harmful not in text for _, text in chat.history)


def test_reply_is_returned_without_template():
    assert clean_reply("괜찮아요 <end_of_turn>\n<start_of_turn>user\n") == "괜찮아요"
    assert clean_reply("  그랬구나<start_of_turn>model") == "그랬구나"
    chat = session(ScriptedGenerator(f"그랬구나{END_OF_TURN}\n"))
    assert chat.respond("안녕").reply == "그랬구나"


def test_reset_starts_a_new_conversation():
    generator = ScriptedGenerator("응", "안녕")
    chat = session(generator)
    chat.respond("안녕")
    chat.reset()
    turn = chat.respond("처음 뵙겠습니다")
    assert chat.history == [(USER, "처음 뵙겠습니다"), (MODEL, "안녕")] and turn.prompt.history_blocks == ()


def test_empty_message_is_refused_and_not_recorded():
    chat = session(ScriptedGenerator())
    with pytest.raises(ValueError, match="empty"):
        chat.respond("   ")
    assert chat.history == []
