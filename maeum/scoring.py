"""How well a model predicts reference responses: per-example negative log-likelihood, loss, bits per character.

Used by train (validation loss) and evaluate (base, tuned and the re-scored champion). Scores are
kept per example, so evaluate can compare two models on the same examples with a paired
bootstrap and in a tokenizer-independent unit: bits per character of the reference responses
(summed response-token NLL / ln 2 / response characters), which two models with different
vocabularies can share where their token-level losses cannot.

Only the positions that carry loss go through the vocabulary projection: the backbone's hidden
states are gathered at the weighted positions first. On Gemma2 2B the 256,000-word head is a fifth
of the forward FLOPs and most positions are prompt, and full logits of one batch would take
gigabytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from maeum import batching
from maeum.progress import Progress
from maeum.tokenized import TokenizedSplit


@dataclass(frozen=True)
class ExampleScores:
    """Summed NLL (nats) over each example's weighted tokens, and how many tokens that was."""

    nll: np.ndarray
    tokens: np.ndarray

    @property
    def mean_loss(self) -> float:
        """Mean cross-entropy per weighted token, over all examples."""
        return float(self.nll.sum() / self.tokens.sum())

    def bits_per_character(self, characters: np.ndarray) -> float:
        """Total NLL in bits divided by the characters of the scored responses."""
        return float(self.nll.sum() / math.log(2) / np.asarray(characters).sum())


def weighted_log_likelihoods(backbone: Any, x: dict[str, np.ndarray], y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """NLL (nats) of each weighted target token of one batch, shape (rows, length), 0 elsewhere."""
    import keras

    hidden = keras.ops.convert_to_numpy(backbone.predict_on_batch(x))
    rows, columns = np.nonzero(weights)
    nll = np.zeros(weights.shape, dtype=np.float64)
    if len(rows) == 0:
        return nll
    # The reverse embedding applies Gemma2's final logit soft-cap, exactly as the causal LM does.
    logits = keras.ops.convert_to_numpy(backbone.token_embedding(hidden[rows, columns], reverse=True)).astype(np.float64)
    peak = logits.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(logits - peak).sum(axis=-1)) + peak[:, 0]
    nll[rows, columns] = log_norm - logits[np.arange(len(rows)), y[rows, columns]]
    return nll * weights


def score_examples(causal_lm: Any, split: TokenizedSplit, boundaries: Sequence[int], batch_size: int,
                   what: str | None = None) -> ExampleScores:  # fmt: skip
    """Per-example NLL of the weighted (response) tokens of `split`.

    Args:
        causal_lm: a keras-hub causal LM (LoRA on or off).
        split: tokenized examples with loss weights.
        boundaries: bucket lengths for batching (`maeum.batching`).
        batch_size: rows per batch (no gradients: wider than training is fine).
        what: a label to show progress under (None: silent).

    Returns:
        Summed NLL and token count per example, in the split's order.
    """
    plans = batching.plan_batches(split.lengths - 1, boundaries, batch_size)
    nll, tokens = np.zeros(len(split)), np.zeros(len(split))
    progress = Progress(what, len(plans)) if what else None
    backbone = causal_lm.backbone
    for plan, (x, y, weights) in zip(plans, batching.iterate_batches(split, plans), strict=True):
        per_token = weighted_log_likelihoods(backbone, x, y, weights)
        real = plan.indices != batching.PAD_ROW
        nll[plan.indices[real]] = per_token.sum(axis=1)[real]
        tokens[plan.indices[real]] = weights.sum(axis=1)[real]
        if progress:
            progress.update(tokens=int(weights.sum()))
    if progress:
        progress.close()
    return ExampleScores(nll, tokens)
