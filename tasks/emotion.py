"""emotion stage: train the classifier that reads which emotion group a reply reflects.

Trains `maeum.emotion` on the listener replies (`response_text`) of the preprocessed training
split, each labelled with its dialogue's `emotion_group`, and scores it on the validation split:
accuracy, per-group recall, and the share of the most frequent validation group (the best any
constant guess scores). Evaluate loads the model to compute `maeum.metrics.emotion_reflection`
of base and tuned replies.

    python -m tasks.emotion [--params params.yaml]
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import pandas as pd

from maeum import atomic
from maeum.config import Params
from maeum.corpus import data_version
from maeum.emotion import EmotionClassifier, fit
from maeum.metrics import emotion_reflection
from maeum.runtime import stage_params

log = logging.getLogger(__name__)

COLUMNS = ["response_text", "emotion_group"]


# === Core ===


def train_classifier(train: pd.DataFrame, validation: pd.DataFrame, seed: int) -> tuple[EmotionClassifier, dict[str, Any]]:
    """Fits on `train`'s replies and scores on `validation`'s.

    Args:
        train: examples with `response_text` and `emotion_group` (preprocess's columns).
        validation: the same columns, never trained on.
        seed: the classifier's random state.

    Returns:
        The classifier (its card holding the metrics) and the metrics: `accuracy`,
        `majority_rate` (share of validation's most frequent group), `recall` per group,
        the example counts and `train_seconds`.
    """
    started = time.perf_counter()
    classifier = fit(train["response_text"].tolist(), train["emotion_group"].tolist(), seed)
    train_seconds = time.perf_counter() - started
    truth = validation["emotion_group"].tolist()
    accuracy, recall = emotion_reflection(classifier.predict(validation["response_text"].tolist()), truth)
    metrics = {
        "accuracy": accuracy,
        "majority_rate": float(validation["emotion_group"].value_counts(normalize=True).max()) if truth else 0.0,
        "recall": recall,
        "train_examples": len(train),
        "validation_examples": len(validation),
        "train_seconds": train_seconds,
    }
    classifier.card["metrics"] = metrics
    return classifier, metrics


# === Edge ===


def run(params: Params) -> dict[str, Any]:
    """The stage: read both splits, train, write the model folder and the metrics file atomically."""
    train_path, validation_path = params.preprocess.split_path("train"), params.preprocess.split_path("validation")
    train = pd.read_parquet(train_path, columns=COLUMNS)
    validation = pd.read_parquet(validation_path, columns=COLUMNS)
    classifier, metrics = train_classifier(train, validation, params.emotion.seed)
    classifier.card["data_version"] = data_version([train_path, validation_path]).md5
    with atomic.atomic_dir(params.emotion.model_dir) as staging:
        classifier.save(staging)
    atomic.write_json(params.emotion.metrics_file, metrics)
    log.info("emotion: validation accuracy %.3f (majority %.3f), recall %s", metrics["accuracy"], metrics["majority_rate"],
             metrics["recall"])  # fmt: skip
    return metrics


def main(argv: list[str] | None = None) -> int:
    params = stage_params(__doc__, argv)
    metrics = run(params)
    print(f"emotion: validation accuracy {metrics['accuracy']:.3f} against {metrics['majority_rate']:.3f} for the "
          f"most frequent group; trained in {metrics['train_seconds']:.1f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
