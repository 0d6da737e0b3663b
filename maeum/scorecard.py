"""One model on one validation set: per-example likelihood of the reference replies and its own replies, scored.

Evaluate fills a scorecard for the base and for the tuned model; promotion fills one for the
current champion on the *challenger's* validation examples, with the champion's own tokenizer.
Everything that is compared between models is measured the same way here:

- per-example summed NLL of the reference response (`maeum.scoring`), its token count, and the
  response's characters, so that token losses (same tokenizer only) and bits per character
  (any tokenizer) come from the same numbers, and a paired bootstrap can resample examples;
- greedy replies to `count` validation prompts, scored by `generation_metrics`. The prompts are
  spread evenly over the split ordered by emotion group (`generation_rows`), so every group is
  represented in proportion, not just the first few dialogues of the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from maeum import batching, gemma, metrics, scoring
from maeum.tokenized import tokenize_examples

SCORING_BATCH = 8
RESPONSE_LOSS = "response"  # bits per character are always over the reference reply, whatever train.loss_on


@dataclass
class Scorecard:
    """What `score_model` measured; `metrics` holds plain numbers (no model suffix)."""

    scores: scoring.ExampleScores
    characters: np.ndarray
    talk_ids: np.ndarray
    rows: list[int]  # positions of the examples that got a generated reply
    prompts: list[str]
    replies: list[str]
    metrics: dict[str, float] = field(default_factory=dict)


def generation_metrics(replies: list[str], ended: list[bool], references: list[str], groups: list[str],
                       predicted_groups: list[str | None]) -> dict[str, float]:  # fmt: skip
    """Every reply-quality number of evaluate, for one model's replies to the same prompts."""
    reflection, per_group = metrics.emotion_reflection(predicted_groups, groups)
    values = {
        "chrf": metrics.chrf(replies, references),
        "distinct_1": metrics.distinct_n(replies, 1),
        "distinct_2": metrics.distinct_n(replies, 2),
        "repetition_rate": metrics.repetition_rate(replies),
        "length_ratio": metrics.length_ratio(replies, references) if any(r.strip() for r in replies) else 0.0,
        "exploration_rate": metrics.exploration_rate(replies),
        "emotion_reflection": reflection,
        "end_of_turn_rate": sum(ended) / len(ended) if ended else 0.0,
        "mid_word_start_rate": metrics.mid_word_start_rate(replies),
        "replacement_char_rate": metrics.replacement_character_rate(replies),
    }
    values.update({f"emotion_reflection_{group}": value for group, value in per_group.items()})
    return values


def generation_rows(examples: pd.DataFrame, count: int) -> list[int]:
    """Row positions of `count` examples spread evenly over the split ordered by emotion group (deterministic)."""
    order = examples.reset_index(drop=True).sort_values(["emotion_group", "talk_id", "turn"], kind="stable").index.to_numpy()
    count = min(count, len(order))
    return sorted(order[np.linspace(0, len(order) - 1, count).round().astype(int)].tolist()) if count else []


def score_model(model: gemma.LoadedBase, examples: pd.DataFrame, sequence_length: int, boundaries: list[int] | None,
                count: int, max_new_tokens: int, emotion_classifier: Any, what: str) -> Scorecard:  # fmt: skip
    """Scores `model` on preprocessed validation examples, tokenized with the model's own tokenizer.

    Args:
        model: base with or without LoRA, and its tokenizer.
        examples: rows of the preprocess stage's validation parquet.
        sequence_length: `train.sequence_length`.
        boundaries: bucket lengths for scoring; None chooses them from these examples' lengths.
        count: how many prompts (`generation_rows`) get a generated reply.
        max_new_tokens: reply length limit.
        emotion_classifier: `maeum.emotion.EmotionClassifier` for emotion reflection.
        what: a label for progress lines ("base", "tuned", "champion v3").
    """
    split, _ = tokenize_examples(examples, model.tokenizer, sequence_length, RESPONSE_LOSS)
    lengths = split.lengths - 1
    if boundaries is None:
        boundaries = batching.best_boundaries(lengths, 8, sequence_length)
    scores = scoring.score_examples(model.causal_lm, split, boundaries, SCORING_BATCH, what=f"scoring {what}")
    rows = generation_rows(examples, count)
    generator = gemma.ReplyGenerator(model, prompt_budget=sequence_length, max_new_tokens=max_new_tokens)
    generated = generator.generate([split.prompt(i).tolist() for i in rows])
    replies = [generator.detokenize(ids) for ids, _ in generated]
    references = examples["response_text"].astype(str).iloc[rows].tolist()
    groups = examples["emotion_group"].astype(str).iloc[rows].tolist()
    predicted = emotion_classifier.predict(replies) if replies else []
    predicted = [group if reply.strip() else None for group, reply in zip(predicted, replies)]  # an empty reply reflects nothing
    values = generation_metrics(replies, [ended for _, ended in generated], references, groups, predicted)
    characters = examples["response_text"].astype(str).str.len().to_numpy()
    values.update({"val_loss": scores.mean_loss, "perplexity": math.exp(scores.mean_loss),
                   "val_bpc": scores.bits_per_character(characters), "generations": float(len(rows))})  # fmt: skip
    prompts = [generator.detokenize(split.prompt(i).tolist()) for i in rows]
    return Scorecard(scores, characters, examples["talk_id"].astype(str).to_numpy(), rows, prompts, replies, values)


def paired_bootstrap(nll_a: np.ndarray, nll_b: np.ndarray, characters: np.ndarray, groups: np.ndarray, samples: int,
                     seed: int) -> dict[str, float]:  # fmt: skip
    """How often model A's bits per character are below model B's when dialogues are resampled.

    Turns of one dialogue are not independent, so whole dialogues (`groups`) are resampled.

    Returns:
        bpc of each, the relative difference (B - A) / B, the share of resamples in which A is
        better, and a 95% interval of the relative difference.
    """
    names, index = np.unique(groups, return_inverse=True)
    per_group = np.zeros((3, len(names)))
    np.add.at(per_group[0], index, nll_a)
    np.add.at(per_group[1], index, nll_b)
    np.add.at(per_group[2], index, characters)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(names), size=(samples, len(names)))
    a, b, chars = (per_group[row][draws].sum(axis=1) for row in range(3))
    bpc_a, bpc_b = a / chars / math.log(2), b / chars / math.log(2)
    relative = (bpc_b - bpc_a) / bpc_b
    total_a = nll_a.sum() / characters.sum() / math.log(2)
    total_b = nll_b.sum() / characters.sum() / math.log(2)
    return {"bpc_a": float(total_a), "bpc_b": float(total_b), "relative_improvement": float((total_b - total_a) / total_b),
            "share_a_better": float((bpc_a < bpc_b).mean()), "interval_low": float(np.quantile(relative, 0.025)),
            "interval_high": float(np.quantile(relative, 0.975))}  # fmt: skip
