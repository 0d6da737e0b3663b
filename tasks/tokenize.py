"""tokenize stage: token ids and a response-only loss mask per example.

Each example becomes `<bos> prompt response` with at most `train.sequence_length + 1` ids (the
model reads the first L and predicts the last L). Too-long examples lose their oldest history
turns first (`maeum.dialogue.fit_to_length`); every truncation is counted and reported.

keras-hub's Gemma2 preprocessor only masks padding, so the loss would also train the model
to predict the user's words. Here each id carries a weight: 1 on the response and its closing
`<end_of_turn>`, 0 on the prompt (`train.loss_on: response`), or 1 everywhere
(`train.loss_on: all`). Padding is added later, by train, so the stored arrays stay ragged.

    python -m tasks.tokenize [--params params.yaml]
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from maeum import atomic, gemma
from maeum.config import Params, load_params
from maeum.dialogue import END_OF_TURN, USER_HEADER, USER_TAIL, fit_to_length
from maeum.runtime import prepare_process

log = logging.getLogger(__name__)

SPLITS = ("train", "validation")


@dataclass(frozen=True)
class TokenizedSplit:
    """Ragged examples: `ids[offsets[i]:offsets[i+1]]` is example i; `prompt_lengths[i]` ids are its prompt."""

    ids: np.ndarray  # int32, all examples concatenated
    weights: np.ndarray  # float32, loss weight of each id when it is the prediction target
    offsets: np.ndarray  # int64, len = examples + 1
    prompt_lengths: np.ndarray  # int32
    talk_ids: np.ndarray  # str
    turns: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.offsets[index], self.offsets[index + 1]
        return self.ids[start:end], self.weights[start:end]

    def prompt(self, index: int) -> np.ndarray:
        start = self.offsets[index]
        return self.ids[start : start + self.prompt_lengths[index]]

    def save(self, path: Path) -> None:
        with atomic.atomic_path(path) as tmp:
            with tmp.open("wb") as handle:
                np.savez(handle, **{name: getattr(self, name) for name in self.__dataclass_fields__})

    @classmethod
    def load(cls, path: Path) -> TokenizedSplit:
        with np.load(path, allow_pickle=False) as data:
            return cls(**{name: data[name] for name in cls.__dataclass_fields__})


def _ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(map(int, ids)) for ids in tokenizer(texts)]


def tokenize_examples(
    examples: pd.DataFrame, tokenizer: Any, sequence_length: int, loss_on: Literal["response", "all"]
) -> tuple[TokenizedSplit, dict[str, Any]]:
    """Tokenizes preprocessed examples into ragged ids with loss weights.

    Args:
        examples: rows from the preprocess stage (`history_blocks`, `user_text`, `response_text`).
        tokenizer: a keras-hub `GemmaTokenizer`.
        sequence_length: the model's input length; each example holds at most this + 1 ids.
        loss_on: "response" (weights on the reply only) or "all" (every id).

    Returns:
        The tokenized split and statistics (lengths, truncation counts).
    """
    bos = [tokenizer.token_to_id("<bos>")]
    end_of_turn = tokenizer.token_to_id(END_OF_TURN)
    header, tail = _ids(tokenizer, [USER_HEADER, USER_TAIL])
    # One batched call per kind of piece: per-example calls are 10-80x slower.
    block_counts = examples["history_blocks"].map(len).to_numpy()
    all_blocks = _ids(tokenizer, [block for blocks in examples["history_blocks"] for block in blocks])
    user_ids = _ids(tokenizer, examples["user_text"].tolist())
    response_ids = _ids(tokenizer, examples["response_text"].tolist())

    ids, weights, offsets, prompt_lengths = [], [], [0], []
    dropped_turns = cut_user = cut_response = truncated = 0
    block_start = 0
    for count, user, response in zip(block_counts, user_ids, response_ids):
        history = all_blocks[block_start : block_start + count]
        block_start += count
        fitted = fit_to_length(bos, history, header, user, tail, response + [end_of_turn], sequence_length + 1)
        ids += fitted.prompt + fitted.response
        prompt_weight = 1.0 if loss_on == "all" else 0.0
        weights += [prompt_weight] * len(fitted.prompt) + [1.0] * len(fitted.response)
        offsets.append(len(ids))
        prompt_lengths.append(len(fitted.prompt))
        dropped_turns += fitted.dropped_history_turns
        cut_user += fitted.cut_user_tokens
        cut_response += fitted.cut_response_tokens
        truncated += fitted.truncated

    split = TokenizedSplit(
        ids=np.asarray(ids, dtype="int32"),
        weights=np.asarray(weights, dtype="float32"),
        offsets=np.asarray(offsets, dtype="int64"),
        prompt_lengths=np.asarray(prompt_lengths, dtype="int32"),
        talk_ids=examples["talk_id"].to_numpy(dtype=str),
        turns=examples["turn"].to_numpy(dtype="int32"),
    )
    lengths = split.lengths
    stats = {
        "examples": len(split),
        "tokens": int(lengths.sum()),
        "loss_tokens": int(split.weights.sum()),
        "length_mean": round(float(lengths.mean()), 2) if len(split) else 0.0,
        "length_p50": int(np.percentile(lengths, 50)) if len(split) else 0,
        "length_p99": int(np.percentile(lengths, 99)) if len(split) else 0,
        "length_max": int(lengths.max()) if len(split) else 0,
        "truncated_examples": int(truncated),
        "dropped_history_turns": int(dropped_turns),
        "cut_user_tokens": int(cut_user),
        "cut_response_tokens": int(cut_response),
    }
    return split, stats


def run(params: Params) -> dict[str, dict[str, Any]]:
    """The stage: tokenized splits into `tokenize.out_dir` (as a whole), statistics into `tokenize.stats_file`."""
    base = gemma.load_base(params.model.base_dir)
    all_stats = {}
    with atomic.atomic_dir(params.tokenize.out_dir) as staging:
        for split_name in SPLITS:
            examples = pd.read_parquet(params.preprocess.out_dir / f"{split_name}.parquet")
            split, stats = tokenize_examples(examples, base.tokenizer, params.train.sequence_length, params.train.loss_on)
            split.save(staging / f"{split_name}.npz")
            all_stats[split_name] = stats
            log.info("%s: %s", split_name, stats)
            if stats["truncated_examples"]:
                log.warning("%s: %d examples truncated to %d tokens (%d history turns dropped, %d user / %d response tokens cut)",
                            split_name, stats["truncated_examples"], params.train.sequence_length + 1,
                            stats["dropped_history_turns"], stats["cut_user_tokens"], stats["cut_response_tokens"])  # fmt: skip
    atomic.write_json(params.tokenize.stats_file, all_stats)
    return all_stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: ./params.yaml)")
    args = parser.parse_args(argv)
    prepare_process()
    run(load_params(args.params))
    return 0


if __name__ == "__main__":
    sys.exit(main())
