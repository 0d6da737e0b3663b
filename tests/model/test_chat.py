"""`maeum chat` on the tiny trained model: same prompt ids as training, a reply, the crisis
response, and generation compiled once for every turn."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from maeum import chat, gemma
from maeum.dialogue import USER, ChatPrompt
from maeum.tokenized import TokenizedSplit, tokenize_examples
from tests.conftest import REPO
from tests.model.conftest import working_dir

MAEUM = Path(sys.executable).parent / "maeum"


@pytest.fixture(scope="module")
def chat_model(trained, prepared, pipeline_dir, pipeline_env):
    with working_dir(pipeline_dir, pipeline_env):
        return chat.load_chat_model(prepared)  # the default: the adapter of the last training


class TeacherForcing:
    """Replies with the corpus's reference reply, so the history is the corpus dialogue."""

    def __init__(self, tokenizer, replies):
        self.tokenizer, self.replies = tokenizer, list(replies)

    def generate_ids(self, prompts):
        return chat.token_ids(self.tokenizer, [self.replies.pop(0)])

    def detokenize(self, ids):
        return gemma.decode(self.tokenizer, ids)


@pytest.fixture(scope="module")
def base(prepared, pipeline_dir):
    return gemma.load_base(pipeline_dir / prepared.model.base_dir)


def test_chat_prompt_ids_are_the_tokenize_stage_prompt_ids(prepared, pipeline_dir, base, small_screen):
    examples = pd.read_parquet(pipeline_dir / prepared.preprocess.split_path("validation"))
    split = TokenizedSplit.load(pipeline_dir / prepared.tokenize.split_path("validation"))
    budget = chat.prompt_budget(prepared)
    compared = screened = 0
    for _, dialogue in examples.groupby("talk_id", sort=False):
        session = chat.ChatSession(TeacherForcing(base.tokenizer, dialogue["response_text"]), base.tokenizer,
                                   prepared.preprocess.max_history_turns, budget, small_screen)  # fmt: skip
        for index, row in dialogue.sort_values("turn").iterrows():
            turn = session.respond(row["user_text"])
            if turn.screened:  # the screen answered instead of the corpus reply: the rest of this dialogue differs
                screened += 1
                break
            assert turn.prompt.text == row["prompt"]
            response_ids = len(chat.token_ids(base.tokenizer, [row["response_text"]])[0]) + 1  # + <end_of_turn>
            if len(turn.fitted.prompt) + response_ids <= budget:  # training kept the whole prompt too
                assert turn.fitted.prompt == split.prompt(index).tolist()
                compared += 1
            if turn.replaced:  # the screen replaced the corpus reply: later prompts hold the replacement
                break
    # Prompts longer than the budget are cut differently by design (tests/code/test_chat_template.py checks the cut).
    assert compared >= 50 and screened < 0.1 * len(examples)


def test_chat_truncates_exactly_as_the_tokenize_stage(prepared, pipeline_dir, base):
    examples = pd.read_parquet(pipeline_dir / prepared.preprocess.split_path("validation"))
    examples = examples[examples["turn"] == 3].head(20).reset_index(drop=True)
    sequence_length = 64  # far below these examples' length: history turns and user tokens get cut
    split, stats = tokenize_examples(examples, base.tokenizer, sequence_length, "response")
    assert stats["dropped_history_turns"] > 0 and stats["cut_user_tokens"] > 0 and stats["cut_response_tokens"] == 0
    for index, row in examples.iterrows():
        response_ids = len(chat.token_ids(base.tokenizer, [row["response_text"]])[0]) + 1  # + <end_of_turn>
        # Training fits prompt + response into sequence_length + 1; given that budget minus the
        # response, chat must cut exactly the same pieces.
        prompt = ChatPrompt(tuple(row["history_blocks"]), row["user_text"])
        fitted = chat.encode_prompt(base.tokenizer, prompt, sequence_length + 1 - response_ids)
        assert fitted.prompt == split.prompt(index).tolist()


def test_later_turns_reuse_the_compiled_generation(chat_model, prepared):
    chat_model.model.causal_lm.generate_function = None
    session = chat.open_session(prepared, chat_model, max_new_tokens=32)
    messages = ["요즘 너무 지쳐", "회사 일이 너무 많아서 잠도 못 자", "친구한테 말해도 잘 안 들어줘", "그래도 고마워",
                "내일은 좀 나아질까"]  # fmt: skip
    turns = [session.respond(message) for message in messages]
    assert sum(turn.model_reply is not None for turn in turns) >= 2  # the model answered more than once
    assert chat_model.model.causal_lm.generate_function.experimental_get_tracing_count() == 1


def test_replies_have_no_template_and_history_alternates(chat_model, prepared):
    session = chat.open_session(prepared, chat_model, max_new_tokens=32)
    for message in ("요즘 너무 지쳐", "잠을 못 자"):
        turn = session.respond(message)
        assert "<end_of_turn>" not in turn.reply and "<start_of_turn>" not in turn.reply
    assert [role for role, _ in session.history] == [USER, "model", USER, "model"]


def test_make_sampler_passes_the_options():
    sampler = chat.make_sampler("top_p", temperature=0.7, top_k=5, top_p=0.9, seed=1)
    assert type(sampler).__name__ == "TopPSampler" and sampler.p == 0.9 and sampler.temperature == 0.7
    assert type(chat.make_sampler("top_k", 1.0, 3, 0.9, None)).__name__ == "TopKSampler"
    with pytest.raises(ValueError, match="sampler must be one of"):
        chat.make_sampler("beam", 1.0, 5, 0.9, None)


# === The console script ===


def run_maeum(*args, cwd, env, timeout=300):
    return subprocess.run([str(MAEUM), *args], check=False, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **env})  # fmt: skip


def test_maeum_chat_message_prints_a_reply(trained, pipeline_dir, pipeline_env):
    done = run_maeum("chat", "--message", "요즘 너무 지쳐", cwd=pipeline_dir, env=pipeline_env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and "Traceback" not in done.stderr
    assert "LoRA maeum_4_epoch2.lora.h5 (rank 4)" in done.stderr  # the last training's adapter, by default


def test_maeum_chat_answers_a_crisis_with_the_crisis_lines(trained, screen, pipeline_dir, pipeline_env):
    done = run_maeum("chat", "--message", "그냥 다 끝내고 죽고 싶어", cwd=pipeline_dir, env=pipeline_env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == screen.responses.texts["crisis"]
    assert all(line in done.stdout for line in ("109", "1577-0199", "1388", "112", "119"))


def test_repeated_messages_are_one_conversation_printed_as_a_transcript(trained, screen, pipeline_dir, pipeline_env, capsys):
    from maeum import cli

    with working_dir(pipeline_dir, pipeline_env):
        status = cli.main(["chat", "-m", "요즘 너무 지쳐", "-m", "죽고 싶어", "-m", "고마워요", "--max-length", "16",
                           "--sampler", "top_k", "--seed", "1", "--show-prompt"])  # fmt: skip
    out, err = capsys.readouterr()
    assert status == 0
    assert out.startswith("나> 요즘 너무 지쳐\n마음> ")
    crisis = screen.responses.texts["crisis"]
    assert f"나> 죽고 싶어\n마음> {crisis}\n나> 고마워요\n마음> " in out
    assert out.rstrip().endswith(screen.responses.texts["supportive_footer"])  # screened after the crisis
    last_prompt = err.rsplit("--- prompt ---\n", 1)[1]
    assert "<start_of_turn>user\n죽고 싶어<end_of_turn>\n<start_of_turn>model\n" + crisis in last_prompt


def test_maeum_help_imports_no_model_stack():
    done = subprocess.run([str(MAEUM), "chat", "--help"], check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--adapter" in done.stdout and "--sampler" in done.stdout
    probe = ("import sys, maeum.cli, maeum.chat, maeum.adapters; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'keras', 'keras_hub', 'tensorflow', 'mlflow'}))")
    done = subprocess.run([sys.executable, "-c", probe], check=False, capture_output=True, text=True)
    assert done.stdout.strip() == "[]", done.stderr


@pytest.mark.parametrize("args, message", [
    (["chat", "--message", ""], "--message is empty"),
    (["chat", "--message", "안녕", "--max-length", "0"], "--max-length must be at least 1"),
    (["chat", "--message", "안녕", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["chat", "--nope"], "unrecognized arguments"),
    (["safety", "assess", "  "], "the message is empty"),
    (["registry", "promote"], "the following arguments are required"),
])  # fmt: skip
def test_bad_input_to_any_command_is_one_clear_line_and_exit_2(args, message, tmp_path):
    done = subprocess.run([str(MAEUM), *args], check=False, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr and "Traceback" not in done.stderr

