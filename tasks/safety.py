"""safety stage: train the learned crisis screen and measure the whole screen, per category.

From the labelled messages in `safety.train_file` (every one written by the project; none from real
users) it trains the risk and kind classifiers, and from `safety.replies_file` the reply classifier
(`maeum.safety.classifier`). Thresholds are chosen on a stratified validation split, recall first:
check_in keeps `safety.check_in_recall` of the crisis messages, crisis keeps crisis on safe
messages within `safety.crisis_safe_rate`. The models are then refitted on the whole set.

The screen as chat serves it (rules + classifier + context logic) is then scored on the validation
split and on `safety.heldout_file`, which was written in a separate pass and is never trained or
tuned on. Both go to `safety.metrics_file` (DVC metrics) and to an MLflow run in the experiment
`<tracking.experiment>-safety`, with the data versions, the parameters, the thresholds and the model.

    python -m tasks.safety [--params params.yaml]
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from maeum import atomic, tracking
from maeum.config import Params, SafetyParams
from maeum.corpus import data_version
from maeum.runtime import stage_params
from maeum.safety import evaluation
from maeum.safety.classifier import (
    THIRD_PERSON,
    Thresholds,
    TrainedScreen,
    choose_thresholds,
    feature_frame,
    make_classifier,
    make_features,
    make_model,
    positive_scores,
    rate_threshold,
    recall_threshold,
)
from maeum.safety.evaluation import REPLY_LABELS, Example
from maeum.safety.normalise import Lexicon, views
from maeum.safety.rules import load_rules
from maeum.safety.screen import Responses, Screen

log = logging.getLogger(__name__)

EXPERIMENT_SUFFIX = "-safety"


# === Core ===


def stratified_split(examples: list[Example], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of a fit part and a validation part holding `fraction` of every (label, category)."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, str], list[int]] = {}
    for index, example in enumerate(examples):
        groups.setdefault((example.label, example.category), []).append(index)
    fit, validation = [], []
    for key in sorted(groups):
        members = rng.permutation(groups[key]).tolist()
        count = max(1, round(len(members) * fraction)) if len(members) > 1 else 0
        validation += members[:count]
        fit += members[count:]
    return sorted(fit), sorted(validation)


def fit_models(message_views: list, messages: list[Example], reply_views: list, replies: list[Example],
               seed: int) -> tuple[Any, Any, Any, Any]:  # fmt: skip
    """Fits the shared message features, the risk and kind models on them, and the reply model."""
    features = make_features()
    matrix = features.fit_transform(feature_frame(message_views))
    risk = make_classifier(seed).fit(matrix, [e.label for e in messages])
    crisis_rows = [i for i, e in enumerate(messages) if e.label == "crisis"]
    kind = make_classifier(seed).fit(matrix[crisis_rows], [messages[i].category for i in crisis_rows])
    reply = make_model(seed).fit(feature_frame(reply_views), [e.label for e in replies])
    return features, risk, kind, reply


def train_screen(messages: list[Example], replies: list[Example], lexicon: Lexicon, safety: SafetyParams
                 ) -> tuple[TrainedScreen, dict[str, Any]]:  # fmt: skip
    """Chooses thresholds on a validation split, then refits on everything.

    Returns:
        The trained screen and the validation split's models and indices (for scoring the screen there).
    """
    message_views = [views(e.text, lexicon) for e in messages]
    reply_views = [views(e.text, lexicon) for e in replies]
    fit, validation = stratified_split(messages, safety.validation_fraction, safety.seed)
    reply_fit, reply_validation = stratified_split(replies, safety.validation_fraction, safety.seed)

    def pick(items, indices):
        return [items[i] for i in indices]

    features, risk, kind, reply = fit_models(pick(message_views, fit), pick(messages, fit), pick(reply_views, reply_fit),
                                             pick(replies, reply_fit), safety.seed)  # fmt: skip
    scores = positive_scores(risk, features.transform(feature_frame(pick(message_views, validation))), "crisis")
    labels = np.asarray([messages[i].label for i in validation])
    check_in, crisis = choose_thresholds(scores[labels == "crisis"], scores[labels == "safe"], safety.check_in_recall,
                                         safety.crisis_safe_rate)  # fmt: skip
    reply_scores = positive_scores(reply, feature_frame(pick(reply_views, reply_validation)), "harmful")
    reply_labels = np.asarray([replies[i].label for i in reply_validation])
    reply_threshold = recall_threshold(reply_scores[reply_labels == "harmful"], safety.check_in_recall)
    reply_ordinary = max(rate_threshold(reply_scores[reply_labels == "safe"], safety.reply_safe_rate), reply_threshold)
    thresholds = Thresholds(check_in=check_in, crisis=crisis, reply=reply_threshold, reply_ordinary=reply_ordinary)
    validation_screen = TrainedScreen(features, risk, kind, reply, thresholds, {})

    final = fit_models(message_views, messages, reply_views, replies, safety.seed)
    trained = TrainedScreen(*final, thresholds, {})
    split = {"screen": validation_screen, "validation": validation, "reply_validation": reply_validation}
    return trained, split


def score_screen(screen: Screen, messages: list[Example], replies: list[Example]) -> dict[str, Any]:
    """Levels for messages (each alone, as a first turn) and reply decisions, per category."""
    levels = [screen.assess(e.text).level for e in messages]
    result = evaluation.score_levels(messages, levels)
    if replies:
        result["replies"] = evaluation.score_replies(replies, [screen.screen_reply(e.text).harmful for e in replies])
    return result


def third_person_accuracy(screen: Screen, messages: list[Example]) -> float:
    """Share of third-person crisis messages that get the third-person response (when caught)."""
    caught = [a for a in (screen.assess(e.text) for e in messages if e.category == THIRD_PERSON) if a.level != "none"]
    return sum(a.about == "other" for a in caught) / len(caught) if caught else 0.0


# === Edge ===


def run(params: Params) -> dict[str, Any]:
    """The stage: train, choose thresholds, score validation and held-out, write the model, metrics and MLflow run."""
    import mlflow

    safety = params.safety
    started = time.perf_counter()
    lexicon = Lexicon.load(safety.lexicon_file)
    messages = evaluation.read_examples(safety.train_file)
    replies = evaluation.read_examples(safety.replies_file, REPLY_LABELS)
    heldout = evaluation.read_examples(safety.heldout_file)
    heldout_replies = evaluation.read_examples(safety.replies_heldout_file, REPLY_LABELS)
    trained, split = train_screen(messages, replies, lexicon, safety)
    train_seconds = time.perf_counter() - started

    rules, responses = load_rules(safety.rules_file), Responses.load(safety.responses_file)

    def screen_of(classifier: TrainedScreen) -> Screen:
        return Screen(rules, lexicon, classifier, responses, safety.context_turns)

    validation = score_screen(screen_of(split["screen"]), [messages[i] for i in split["validation"]],
                              [replies[i] for i in split["reply_validation"]])  # fmt: skip
    final = screen_of(trained)
    held = score_screen(final, heldout, heldout_replies)
    versions = {name: data_version([path]).md5 for name, path in (
        ("train", safety.train_file), ("heldout", safety.heldout_file), ("replies", safety.replies_file),
        ("replies_heldout", safety.replies_heldout_file), ("rules", safety.rules_file), ("lexicon", safety.lexicon_file))}  # fmt: skip
    metrics = {
        **evaluation.flat_metrics(validation, "validation"),
        **evaluation.flat_metrics(held, "heldout"),
        "heldout_third_person_routed": third_person_accuracy(final, heldout),
        "heldout_reply_harmful_recall": held["replies"]["harmful_recall"],
        "heldout_reply_safe_replaced_rate": held["replies"]["safe_replaced_rate"],
        "threshold_check_in": trained.thresholds.check_in,
        "threshold_crisis": trained.thresholds.crisis,
        "threshold_reply": trained.thresholds.reply,
        "threshold_reply_ordinary": trained.thresholds.reply_ordinary,
        "train_messages": len(messages),
        "train_replies": len(replies),
        "heldout_messages": len(heldout),
        "train_seconds": train_seconds,
    }
    trained.card = {"data_versions": versions, "sizes": {"train": len(messages), "replies": len(replies),
                                                         "heldout": len(heldout), "replies_heldout": len(heldout_replies)},
                    "metrics": metrics}  # fmt: skip

    with atomic.atomic_dir(safety.model_dir) as staging:
        trained.save(staging)
    atomic.write_json(safety.metrics_file, metrics)
    report = {"validation": validation, "heldout": held}
    atomic.write_json(safety.report_file, report)
    log.info("held-out:\n%s", evaluation.format_table(held))

    tracking.setup(params.tracking.experiment + EXPERIMENT_SUFFIX)
    with mlflow.start_run(run_name=f"safety-{versions['train'][:7]}-{time.strftime('%m%d-%H%M%S')}"):
        mlflow.log_params({f"safety.{k}": str(v) for k, v in asdict(safety).items()})
        mlflow.set_tags({f"maeum.safety_data.{name}": md5 for name, md5 in versions.items()})
        mlflow.log_metrics(tracking.plain_metrics(metrics))
        mlflow.log_dict(report, "evaluation/report.json")
        mlflow.log_artifacts(str(safety.model_dir), artifact_path="screen")
    return metrics


def main(argv: list[str] | None = None) -> int:
    params = stage_params(__doc__, argv)
    metrics = run(params)
    print(f"safety: held-out crisis recall {metrics['heldout_crisis_recall']:.3f} (lowest category "
          f"{metrics['heldout_min_category_recall']:.3f}), safe as crisis {metrics['heldout_safe_crisis_rate']:.3f}, "
          f"flagged {metrics['heldout_safe_flagged_rate']:.3f}; trained in {metrics['train_seconds']:.1f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
