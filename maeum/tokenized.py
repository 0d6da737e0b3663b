"""Tokenized examples: the file format tokenize writes and train, evaluate and chat read, and the encoder.

Each example becomes `<bos> prompt response` with at most `sequence_length + 1` ids (the model
reads the first L and predicts the last L). Too-long examples lose their oldest history turns
first (`maeum.dialogue.fit_to_length`). keras-hub's Gemma2 preprocessor only masks padding, so
each id carries its own loss weight: 1 on the response and its closing `<end_of_turn>`, 0 on the
prompt (`loss_on: response`), or 1 everywhere (`loss_on: all`). Padding is added by the batcher,
so the stored arrays stay ragged.

The encoder lives here, not in the tokenize stage, because evaluate encodes the same validation
examples again with a champion's own tokenizer to compare two models on the same data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from maeum import atomic
from maeum.dialogue import END_OF_TURN, USER_HEADER, USER_TAIL, fit_to_length

log = logging.getLogger(__name__)

BOS_PIECE = "<bos>"


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


TOKENIZE_CHUNK = 8_192  # texts per tokenizer call: batched (fast) but bounded in memory, with progress


@dataclass(frozen=True)
class RaggedIds:
    """Token ids of many texts: `flat[splits[i]:splits[i+1]]` belongs to text i."""

    flat: np.ndarray
    splits: np.ndarray

    def __getitem__(self, index: int) -> list[int]:
        return self.flat[self.splits[index] : self.splits[index + 1]].tolist()


def tokenize_texts(tokenizer: Any, texts: list[str], what: str = "texts") -> RaggedIds:
    """Tokenizes in large batches (one call per chunk: per-text calls are 10-80x slower), kept as numpy."""
    import tensorflow as tf

    flats, lengths = [], []
    # Inside tf.data the tokenizer stays in graph mode and hands back ragged tensors, not Python lists.
    batches = tf.data.Dataset.from_tensor_slices(tf.constant(texts, dtype=tf.string)).batch(TOKENIZE_CHUNK).map(tokenizer)
    done = 0
    for ragged in batches:
        flats.append(ragged.flat_values.numpy().astype("int32"))
        lengths.append(ragged.row_lengths().numpy())
        done += len(lengths[-1])
        if len(texts) > TOKENIZE_CHUNK:
            log.info("tokenized %s: %d / %d", what, done, len(texts))
    splits = np.zeros(len(texts) + 1, dtype="int64")
    if texts:
        np.cumsum(np.concatenate(lengths), out=splits[1:])
    return RaggedIds(np.concatenate(flats) if flats else np.zeros(0, "int32"), splits)


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
    bos = [tokenizer.token_to_id(BOS_PIECE)]
    end_of_turn = tokenizer.token_to_id(END_OF_TURN)
    fixed = tokenize_texts(tokenizer, [USER_HEADER, USER_TAIL])
    header, tail = fixed[0], fixed[1]
    block_counts = examples["history_blocks"].map(len).to_numpy()
    block_starts = np.concatenate([[0], np.cumsum(block_counts)])
    blocks = tokenize_texts(tokenizer, [b for blocks in examples["history_blocks"] for b in blocks], "history turns")
    users = tokenize_texts(tokenizer, examples["user_text"].tolist(), "user turns")
    responses = tokenize_texts(tokenizer, examples["response_text"].tolist(), "responses")

    pieces, prompt_lengths = [], np.zeros(len(examples), dtype="int32")
    dropped_turns = cut_user = cut_response = truncated = 0
    for row in range(len(examples)):
        history = [blocks[b] for b in range(block_starts[row], block_starts[row + 1])]
        fitted = fit_to_length(bos, history, header, users[row], tail, responses[row] + [end_of_turn], sequence_length + 1)
        pieces.append(np.asarray(fitted.prompt + fitted.response, dtype="int32"))
        prompt_lengths[row] = len(fitted.prompt)
        dropped_turns += fitted.dropped_history_turns
        cut_user += fitted.cut_user_tokens
        cut_response += fitted.cut_response_tokens
        truncated += fitted.truncated

    lengths = np.asarray([len(p) for p in pieces], dtype="int64")
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype("int64")
    # Position of each id within its example, vectorized: weight 1 from the response on.
    position = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
    weights = np.ones(offsets[-1], dtype="float32")
    if loss_on == "response":
        weights[position < np.repeat(prompt_lengths, lengths)] = 0.0
    split = TokenizedSplit(
        ids=np.concatenate(pieces) if pieces else np.zeros(0, "int32"),
        weights=weights,
        offsets=offsets,
        prompt_lengths=prompt_lengths,
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
