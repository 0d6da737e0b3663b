import pandas as pd

from maeum.corpus import dialogue_row
from maeum.dialogue import build_prompt
from tasks.preprocess import build_examples


def record(talk_id: str, turns: list[str], emotion: str = "E31") -> dict:
    keys = ["HS01", "SS01", "HS02", "SS02", "HS03", "SS03"]
    content = {key: (turns[i] if i < len(turns) else "") for i, key in enumerate(keys)}
    return {
        "profile": {"persona-id": "Pro_1", "persona": {"persona-id": "A02_G01_C01", "human": ["A02", "G01"], "computer": ["C01"]},
                    "emotion": {"emotion-id": f"S06_D02_{emotion}", "type": emotion, "situation": ["S06", "D02"]}},
        "talk": {"id": {"profile-id": "Pro_1", "talk-id": talk_id}, "content": content},
    }  # fmt: skip


def frame(*records):
    return pd.DataFrame([dialogue_row(r, "Training.json", i) for i, r in enumerate(records)])


def test_one_example_per_system_turn_with_codes():
    examples = build_examples(frame(record("t1", ["h1", "s1", "h2", "s2"]), record("t2", ["a", "b", "c ", "d ", "e", "f"], "E64")), 4)
    assert examples[["talk_id", "turn"]].values.tolist() == [["t1", 1], ["t1", 2], ["t2", 1], ["t2", 2], ["t2", 3]]
    assert examples.loc[4, "emotion_type"] == "E64" and examples.loc[4, "emotion_group"] == "기쁨"
    assert examples.loc[0, "situation"] == "S06" and examples.loc[0, "disease"] == "D02"


def test_prompt_and_response_follow_the_shared_template():
    examples = build_examples(frame(record("t2", ["a", "b", "c ", "d ", "e", "f"])), 4)
    last = examples.iloc[2]
    assert last["prompt"] == build_prompt([("user", "a"), ("model", "b"), ("user", "c"), ("model", "d")], "e", 4).text
    assert last["response"] == "f<end_of_turn>" and last["response_text"] == "f"
    assert list(last["history_blocks"]) == list(build_prompt([("user", "a"), ("model", "b"), ("user", "c"), ("model", "d")], "e", 4).history_blocks)


def test_history_window_is_applied():
    examples = build_examples(frame(record("t2", ["a", "b", "c", "d", "e", "f"])), 2)
    assert list(examples.iloc[2]["history_blocks"]) == ["<start_of_turn>user\nc<end_of_turn>\n", "<start_of_turn>model\nd<end_of_turn>\n"]
    assert build_examples(frame(record("t2", ["a", "b", "c", "d", "e", "f"])), 0).iloc[2]["prompt"].count("<start_of_turn>") == 2
