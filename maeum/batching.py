"""Batches for training and evaluation: length-sorted neighbours padded to a few bucket lengths.

The original recipe pads every example to 256 tokens at batch size 1; on Korean dialogue lengths
most of that compute is padding. Here a batch holds examples of nearly the same length (sorted
within shuffled "megabatches", as Hugging Face's `group_by_length` does) and is padded only to
the smallest bucket length that holds its longest example, so the compiled step sees a handful of
shapes (one per bucket) and little padding. The bucket lengths are given, or chosen from the
data (`best_boundaries`: the lengths that minimise padding for a given number of shapes).
`boundaries=[sequence_length]` at batch size 1 is the original behaviour.

Every batch is full-sized: the last partial batch is topped up with all-padding rows of weight 0,
which change no loss and keep the step from compiling again for a new batch size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

PAD_ROW = -1  # index of a filler row in a batch plan
MEGABATCH = 64  # batches per shuffled group sorted by length: random batch composition, little padding


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


def best_boundaries(input_lengths: np.ndarray, count: int, longest: int) -> list[int]:
    """The `count` bucket lengths that minimise total padding for these lengths (exact, by dynamic programming).

    Args:
        input_lengths: model input length of each example.
        count: how many bucket lengths (compiled shapes) to allow.
        longest: the largest allowed length (`train.sequence_length`); always the last bucket, so a
            later, longer example still fits.

    Returns:
        Sorted bucket lengths, at most `count` of them, the last one `longest`.
    """
    values, counts = np.unique(np.minimum(np.asarray(input_lengths, dtype=np.int64), longest), return_counts=True)
    if len(values) == 0 or values[-1] != longest:
        values, counts = np.append(values, longest), np.append(counts, 0)
    n = len(values)
    count = max(1, min(count, n))
    # Padding of lengths values[i+1..j] padded to values[j]: values[j] * items - their length sum.
    items = np.concatenate([[0], np.cumsum(counts)])
    total = np.concatenate([[0], np.cumsum(counts * values)])

    def cost(i: int, j: int) -> float:  # group (i, j]: values[i+1..j], padded to values[j]; i = -1 for none before
        return float(values[j] * (items[j + 1] - items[i + 1]) - (total[j + 1] - total[i + 1]))

    best = [[np.inf] * n for _ in range(count)]
    cut = [[-1] * n for _ in range(count)]
    for j in range(n):
        best[0][j] = cost(-1, j)
    for k in range(1, count):
        for j in range(k, n):
            for i in range(k - 1, j):
                value = best[k - 1][i] + cost(i, j)
                if value < best[k][j]:
                    best[k][j], cut[k][j] = value, i
    k = int(np.argmin([best[k][n - 1] for k in range(count)]))
    chosen, j = [], n - 1
    while k >= 0 and j >= 0:
        chosen.append(int(values[j]))
        j, k = cut[k][j], k - 1
    return sorted(chosen)


def plan_batches(
    input_lengths: np.ndarray, boundaries: Sequence[int], batch_size: int, rng: np.random.Generator | None = None
) -> list[BatchPlan]:
    """Groups examples of nearly the same length into batches padded to their bucket length.

    Args:
        input_lengths: model input length of each example (ids - 1).
        boundaries: bucket lengths; `[sequence_length]` pads everything to one length.
        batch_size: examples per batch.
        rng: None keeps a fixed order (evaluation); a seeded generator gives a new grouping and
            order per epoch: examples are shuffled, sorted by length within groups of `MEGABATCH`
            batches, cut into batches, and the batches shuffled.

    Returns:
        Every example exactly once, in batches of exactly `batch_size` rows, each padded to the
        smallest bucket length that holds its longest example.
    """
    bucket_lengths(input_lengths, boundaries)  # raises for an example longer than every bucket
    lengths = np.asarray(input_lengths)
    order = rng.permutation(len(lengths)) if rng is not None else np.arange(len(lengths))
    group = batch_size * MEGABATCH if rng is not None else max(len(lengths), 1)
    sorted_order = np.concatenate([chunk[np.argsort(lengths[chunk], kind="stable")]
                                   for chunk in np.array_split(order, max(1, -(-len(order) // group)))]) if len(order) else order  # fmt: skip
    filler = (-len(sorted_order)) % batch_size
    rows = np.concatenate([sorted_order, np.full(filler, PAD_ROW)]).astype(np.int64).reshape(-1, batch_size)
    bounds = np.asarray(sorted(boundaries))
    plans = []
    for row in rows:
        members = row[row != PAD_ROW]
        longest = int(lengths[members].max()) if len(members) else 0
        plans.append(BatchPlan(int(bounds[np.searchsorted(bounds, longest, side="left")]), row))
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
