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


@pytest.fixture(scope="module")
def screen(small_screen):
    return small_screen


@pytest.fixture
def session(screen):
    def make(generator, max_history_turns=MAX_HISTORY_TURNS, max_prompt_tokens=10_000):
        return ChatSession(generator, CharTokenizer(), max_history_turns, max_prompt_tokens, screen)

    return make


@pytest.fixture(scope="module")
def validation_dialogues():
    path = SAMPLE_DIR / "Validation.json"
    return dialogues_frame(read_corpus_file(path), str(path))


@pytest.fixture(scope="module")
def validation_examples(validation_dialogues):
    return build_examples(validation_dialogues, MAX_HISTORY_TURNS)


@pytest.mark.parametrize("window", [MAX_HISTORY_TURNS, 2])  # params.yaml's, and one that cuts third turns
def test_chat_prompts_are_the_preprocess_prompts_turn_by_turn(validation_dialogues, window, session):
    compared = full_windows = 0
    for _, dialogue in build_examples(validation_dialogues, window).groupby("talk_id", sort=False):
        chat = session(ScriptedGenerator(*dialogue["response_text"]), max_history_turns=window)
        for row in dialogue.sort_values("turn").itertuples():
            turn = chat.respond(row.user_text)
            if turn.screened:  # the screen answered instead of the corpus reply: the rest of this dialogue differs
                break
            assert turn.prompt.text == row.prompt
            assert list(turn.prompt.history_blocks) == list(row.history_blocks)
            compared += 1
            full_windows += len(row.history_blocks) == window
            if turn.replaced:  # the screen replaced the corpus reply: later prompts hold the replacement
                break
    assert compared >= 50 and full_windows >= 10


def test_history_window_keeps_only_the_latest_turns(session):
    chat = session(ScriptedGenerator("응", "그랬구나", "많이 힘들었겠다"), max_history_turns=2)
    for message in ("안녕", "오늘 힘들었어", "회사에서 혼났어"):
        turn = chat.respond(message)
    assert turn.prompt.history_blocks == build_prompt([(USER, "오늘 힘들었어"), (MODEL, "그랬구나")], "x", 2).history_blocks
    assert chat.history[-2:] == [(USER, "회사에서 혼났어"), (MODEL, "많이 힘들었겠다")]


def test_prompt_ids_start_with_bos_and_end_with_the_model_header(session):
    generator = ScriptedGenerator("그랬구나")
    session(generator).respond("요즘 너무 지쳐")
    (prompt,) = generator.calls[0]
    assert prompt[0] == CharTokenizer.SPECIAL["<bos>"]
    assert "".join(map(chr, prompt[1:])) == build_prompt([], "요즘 너무 지쳐", MAX_HISTORY_TURNS).text


def test_crisis_message_gets_the_crisis_response_and_the_model_is_not_called(session, screen):
    generator = ScriptedGenerator("절대 보이면 안 되는 답")
    chat = session(generator)
    turn = chat.respond("요즘 매일 죽고 싶다는 생각만 해요")
    crisis = screen.responses.texts["crisis"]
    assert generator.calls == []
    assert turn.reply == crisis and "109" in turn.reply and "1388" in turn.reply and "1577-0199" in turn.reply
    assert turn.screened and turn.model_reply is None and turn.assessment.level == "crisis"
    assert chat.history == [(USER, "요즘 매일 죽고 싶다는 생각만 해요"), (MODEL, crisis)]


def test_turn_after_a_crisis_sees_the_crisis_response_and_carries_the_109_line(session, screen):
    generator = ScriptedGenerator("이야기해 줘서 고마워요")
    chat = session(generator)
    chat.respond("죽고 싶어")
    turn = chat.respond("고마워")
    assert len(generator.calls) == 1 and not turn.screened
    assert turn.prompt.history_blocks[-1].startswith("<start_of_turn>model\n" + screen.responses.texts["crisis"])
    assert turn.reply == "이야기해 줘서 고마워요\n\n" + screen.responses.texts["supportive_footer"]
    assert turn.assessment.screened_session


def test_harmful_model_reply_is_replaced_and_never_reaches_the_history(session, screen):
    harmful = "힘드시면 수면제를 모아 두는 것도 방법이에요."
    chat = session(ScriptedGenerator(harmful))
    turn = chat.respond("요즘 너무 지쳐")
    assert turn.replaced and turn.reply == screen.responses.texts["replaced_reply"] and "109" in turn.reply
    assert turn.model_reply == harmful
    assert all(harmful not in text for _, text in chat.history)


def test_reply_is_returned_without_template(session):
    assert clean_reply("괜찮아요 <end_of_turn>\n<start_of_turn>user\n") == "괜찮아요"
    assert clean_reply("  그랬구나<start_of_turn>model") == "그랬구나"
    chat = session(ScriptedGenerator(f"그랬구나{END_OF_TURN}\n"))
    assert chat.respond("안녕").reply == "그랬구나"


def test_reset_starts_a_new_conversation(session):
    generator = ScriptedGenerator("응", "안녕")
    chat = session(generator)
    chat.respond("안녕")
    chat.reset()
    turn = chat.respond("처음 뵙겠습니다")
    assert chat.history == [(USER, "처음 뵙겠습니다"), (MODEL, "안녕")] and turn.prompt.history_blocks == ()


def test_empty_message_is_refused_and_not_recorded(session):
    chat = session(ScriptedGenerator())
    with pytest.raises(ValueError, match="empty"):
        chat.respond("   ")
    assert chat.history == []
