"""Training at the loss positions only: the vocabulary projection where the loss is taken, nowhere else.

`GemmaCausalLM` projects every position's hidden state onto the vocabulary (B x L x V logits),
and the response-only loss then weights most of them by 0: prompt and padding are ~70% of the
positions on AI Hub lengths. The training model here runs the same backbone, gathers K hidden
states per row at the positions that carry loss (its third input, `loss_positions`: B x K), and
projects only those with `backbone.token_embedding(h, reverse=True)`: the tied projection with
Gemma2's final soft-cap, exactly what `GemmaCausalLM` applies. With the targets and weights
gathered at the same positions, the weighted mean loss, the accuracy and the gradients are those
of the full model. It shares the backbone, so the LoRA weights (and adapters, generation and
scoring) stay the `GemmaCausalLM`'s.

K is fixed per bucket length L (`counts_per_bucket`): the widest span of loss positions among
the examples that fit in L. A batch padded to L holds only such examples, so one K serves every
epoch's grouping and a resumed run, and XLA still compiles one step per bucket. Each row's K
positions end at its last loss position (`pick`); with `loss_on: all`, K is the longest example.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from maeum.tokenized import TokenizedSplit

INPUT = "loss_positions"  # the training model's input beside keras-hub's token_ids and padding_mask


def training_model(backbone: Any) -> Any:
    """A Keras model `{token_ids, padding_mask, loss_positions} -> logits at those positions` (B x K x V) on `backbone`.

    It carries `backbone` as `.backbone`, as `GemmaCausalLM` does, for the code that enables and
    saves LoRA there.
    """
    import keras

    inputs = {name: keras.Input(shape=(None,), dtype="int32", name=name) for name in ("token_ids", "padding_mask", INPUT)}
    hidden = backbone({"token_ids": inputs["token_ids"], "padding_mask": inputs["padding_mask"]})
    picked = keras.ops.take_along_axis(hidden, keras.ops.expand_dims(inputs[INPUT], -1), axis=1)
    model = keras.Model(inputs, backbone.token_embedding(picked, reverse=True), name="loss_positions_lm")
    model.backbone = backbone
    return model


def loss_spans(split: TokenizedSplit) -> np.ndarray:
    """Per example, how many input positions its loss positions span, first to last (0: it has none)."""
    count = len(split)
    # An example's first id is never a target: its weight does not count.
    is_target = np.ones(len(split.weights), dtype=bool)
    is_target[split.offsets[:-1]] = False
    weighted = np.flatnonzero((split.weights > 0) & is_target)
    owner = np.searchsorted(split.offsets, weighted, side="right") - 1
    first = np.full(count, np.iinfo(np.int64).max)
    last = np.full(count, -1)
    np.minimum.at(first, owner, weighted)
    np.maximum.at(last, owner, weighted)
    return np.where(last >= 0, last - first + 1, 0)


def counts_per_bucket(split: TokenizedSplit, boundaries: Sequence[int]) -> dict[int, int]:
    """K for each bucket length L: the widest loss span among the examples that fit in L (at least 1, at most L)."""
    spans = loss_spans(split)
    inputs = split.lengths - 1
    return {int(length): int(min(length, max(1, spans[inputs <= length].max(initial=0)))) for length in boundaries}


def pick(x: dict[str, np.ndarray], y: np.ndarray, weights: np.ndarray, count: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """One batch as `training_model` takes it: each row's `count` positions ending at its last loss position.

    Positions before a row's start are clipped to 0 and weighted 0; a row without loss gets weight 0 throughout.

    Raises:
        ValueError: a loss position falls outside its row's `count` positions (`count` too small for this batch).
    """
    columns = np.arange(weights.shape[1])
    ends = np.where(weights > 0, columns, -1).max(axis=1) + 1  # one past each row's last loss position
    positions = ends[:, None] - count + np.arange(count)[None, :]
    inside = positions >= 0
    positions = np.maximum(positions, 0)
    picked_weights = np.take_along_axis(weights, positions, axis=1) * inside
    if np.count_nonzero(picked_weights) != np.count_nonzero(weights):
        raise ValueError(f"{count} loss positions per row do not hold every weighted target of this batch")
    return ({**x, INPUT: positions.astype("int32")}, np.take_along_axis(y, positions, axis=1),
            picked_weights.astype("float32"))  # fmt: skip
