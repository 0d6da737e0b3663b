"""preprocess stage: one training example per system turn, in the Gemma chat format.

For each system reply SSk the prompt holds up to `preprocess.max_history_turns` earlier turns
and the user utterance HSk; the response is SSk. Ids and emotion codes stay as columns for
evaluation and analysis. One parquet file per split, written atomically.

    python -m tasks.preprocess [--params params.yaml]
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pandas as pd

from maeum import atomic
from maeum.config import Params
from maeum.corpus import dialogues_frame, emotion_group, read_corpus_file, utterances
from maeum.dialogue import MODEL, USER, build_prompt, response_text
from maeum.runtime import stage_params

log = logging.getLogger(__name__)

EXAMPLE_COLUMNS = [
    "talk_id", "turn", "emotion_type", "emotion_group", "situation", "disease", "age", "gender",
    "history_blocks", "user_text", "response_text", "prompt", "response",
]  # fmt: skip


def build_examples(dialogues: pd.DataFrame, max_history_turns: int) -> pd.DataFrame:
    """Turns a dialogue table (from `maeum.corpus.dialogues_frame`) into training examples.

    Args:
        dialogues: one row per validated dialogue.
        max_history_turns: earlier turns kept in each prompt.

    Returns:
        One row per system turn, with the prompt pieces (`history_blocks`, `user_text`), the
        full `prompt` string, the `response` target and the dialogue's codes.
    """
    rows = []
    for dialogue in dialogues.itertuples(index=False):
        turns = utterances(dialogue._asdict())
        history: list[tuple[str, str]] = []
        turn_number = 0
        for (role, text), following in zip(turns, turns[1:] + [(None, None)]):
            if role == USER and following[0] == MODEL:
                turn_number += 1
                prompt = build_prompt(history, text, max_history_turns)
                rows.append({
                    "talk_id": dialogue.talk_id, "turn": turn_number,
                    "emotion_type": dialogue.emotion_type, "emotion_group": emotion_group(dialogue.emotion_type),
                    "situation": dialogue.situation, "disease": dialogue.disease, "age": dialogue.age, "gender": dialogue.gender,
                    "history_blocks": list(prompt.history_blocks), "user_text": prompt.user_text,
                    "response_text": following[1].strip(), "prompt": prompt.text, "response": response_text(following[1]),
                })  # fmt: skip
            history.append((role, text))
    return pd.DataFrame(rows, columns=EXAMPLE_COLUMNS)


def write_split(examples: pd.DataFrame, path: Path) -> None:
    with atomic.atomic_path(path) as tmp:
        examples.to_parquet(tmp, index=False)


def run(params: Params) -> dict[str, int]:
    """The stage: examples for both splits, one parquet file each. Returns examples per split."""
    counts = {}
    for split, path in params.data.split_paths.items():
        dialogues = dialogues_frame(read_corpus_file(path), str(path))
        examples = build_examples(dialogues, params.preprocess.max_history_turns)
        out = params.preprocess.out_dir / f"{split}.parquet"
        write_split(examples, out)
        counts[split] = len(examples)
        log.info("%s: %d dialogues -> %d examples (%s)", split, len(dialogues), len(examples), out)
    return counts


def main(argv: list[str] | None = None) -> int:
    params = stage_params(__doc__, argv)
    run(params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
