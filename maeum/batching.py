"""Batches for training and evaluation: length buckets, or the original recipe's fixed padding.

The original recipe pads every example to 256 tokens at batch size 1; on Korean dialogue lengths
most of that compute is padding. Here each example goes to the smallest bucket that holds it and
is padded only to that bucket's length, so the compiled step sees a handful of shapes
(one per bucket) and little padding. `boundaries=[sequence_length]` is the original behaviour.

Every batch is full-sized: the last partial batch of a bucket is topped up with all-padding rows
of weight 0, which change no loss and keep the step from compiling again for a new batch size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

PAD_ROW = -1  # index of a filler row in a batch plan


@dataclass(frozen=True)
class BatchPlan:
    """One batch: the bucket length it is padded to and the example indices (PAD_ROW = filler)."""

    length: int
    indices: np.ndarray


def bucket_lengths(input_lengths: np.ndarray, boundaries: Sequence[int]) -> np.ndarray:
    """The padded length of each example: the smallest boundary >= its input length.

    Raises:
        ValueError: an example is longer than the largest boundary (tokenize truncates to
            `train.sequence_length`, which must be the largest boundary).
    """
    bounds = np.asarray(sorted(boundaries))
    slots = np.searchsorted(bounds, input_lengths, side="left")
    if len(input_lengths) and slots.max() >= len(bounds):
        longest = int(input_lengths.max())
        raise ValueError(f"an example has {longest} input tokens, more than the largest bucket {bounds[-1]}")
    return bounds[slots]


def plan_batches(
    input_lengths: np.ndarray, boundaries: Sequence[int], batch_size: int, rng: np.random.Generator | None = None
) -> list[BatchPlan]:
    """Groups examples into same-length batches; with `rng`, shuffles within buckets and across batches.

    Args:
        input_lengths: model input length of each example (ids - 1).
        boundaries: bucket lengths; `[sequence_length]` pads everything to one length.
        batch_size: examples per batch.
        rng: None keeps a fixed order (evaluation); a seeded generator gives a new order per epoch.

    Returns:
        Every example exactly once, in batches of exactly `batch_size` rows.
    """
    padded = bucket_lengths(input_lengths, boundaries)
    plans = []
    for length in np.unique(padded):
        members = np.flatnonzero(padded == length)
        if rng is not None:
            members = rng.permutation(members)
        filler = (-len(members)) % batch_size
        members = np.concatenate([members, np.full(filler, PAD_ROW)])
        plans += [BatchPlan(int(length), chunk) for chunk in members.reshape(-1, batch_size)]
    if rng is not None:
        plans = [plans[i] for i in rng.permutation(len(plans))]
    return plans


def make_batch(
    ids: np.ndarray, weights: np.ndarray, offsets: np.ndarray, plan: BatchPlan
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Materializes one planned batch as model inputs, next-token targets and loss weights."""
    rows = len(plan.indices)
    token_ids = np.zeros((rows, plan.length + 1), dtype="int32")
    loss_weights = np.zeros((rows, plan.length + 1), dtype="float32")
    mask = np.zeros((rows, plan.length + 1), dtype=bool)
    for row, index in enumerate(plan.indices):
        if index == PAD_ROW:
            continue
        start, end = offsets[index], offsets[index + 1]
        token_ids[row, : end - start] = ids[start:end]
        loss_weights[row, : end - start] = weights[start:end]
        mask[row, : end - start] = True
    x = {"token_ids": token_ids[:, :-1], "padding_mask": mask[:, :-1]}
    return x, token_ids[:, 1:], loss_weights[:, 1:]


def iterate_batches(split, plans: list[BatchPlan]) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]]:
    for plan in plans:
        yield make_batch(split.ids, split.weights, split.offsets, plan)


def padding_stats(input_lengths: np.ndarray, plans: list[BatchPlan]) -> dict[str, float]:
    """Useful (non-pad) input tokens against all positions computed, for the benchmark and logs."""
    positions = sum(plan.length * len(plan.indices) for plan in plans)
    useful = int(input_lengths.sum())
    return {"useful_tokens": useful, "positions": int(positions), "pad_fraction": 1 - useful / positions if positions else 0.0}
