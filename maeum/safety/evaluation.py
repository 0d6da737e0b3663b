"""Labelled message sets (TSV: label, category, text) and how a screen scores on them, per category.

Crisis messages count as caught when they reach `check_in` or `crisis` (the model is not called
either way); safe messages are counted at both levels, because a `crisis` on "배고파 죽겠다" is a
worse failure than a question. `maeum safety eval FILE.tsv` prints the same numbers.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maeum.safety.rules import SafetyConfigError

COLUMNS = ("label", "category", "text")
MESSAGE_LABELS = ("crisis", "safe")
REPLY_LABELS = ("harmful", "safe")


@dataclass(frozen=True)
class Example:
    label: str
    category: str
    text: str


def read_examples(path: Path, labels: tuple[str, ...] = MESSAGE_LABELS) -> list[Example]:
    """Reads a labelled TSV file with the header `label<TAB>category<TAB>text`.

    Raises:
        SafetyConfigError: missing file, wrong header, a row without three fields, an unknown label
            or an empty text, naming the file and line.
    """
    path = Path(path)
    try:
        handle = path.open(encoding="utf-8", newline="")
    except FileNotFoundError:
        raise SafetyConfigError(f"labelled set not found: {path}") from None
    with handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or tuple(h.strip().lstrip("\ufeff") for h in header) != COLUMNS:
            raise SafetyConfigError(f"{path}:1: header must be {'<TAB>'.join(COLUMNS)}, got {header!r}")
        examples = []
        for line, row in enumerate(reader, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) != len(COLUMNS):
                raise SafetyConfigError(f"{path}:{line}: expected {len(COLUMNS)} tab-separated fields, got {len(row)}")
            label, category, text = (value.strip() for value in row)
            if label not in labels:
                raise SafetyConfigError(f"{path}:{line}: label must be one of {labels}, got {label!r}")
            if not category or not text:
                raise SafetyConfigError(f"{path}:{line}: category and text must not be empty")
            examples.append(Example(label, category, text))
    if not examples:
        raise SafetyConfigError(f"{path}: holds no examples")
    return examples


def _rate(count: int, total: int) -> float:
    return count / total if total else 0.0


def score_levels(examples: list[Example], levels: list[str]) -> dict[str, Any]:
    """Recall per crisis category (check_in or crisis) and false positives per safe category (both levels).

    Args:
        examples: labelled messages.
        levels: the screen's level for each message, in the same order.

    Returns:
        {"crisis": {category: {...}}, "safe": {category: {...}}, "overall": {...}, "missed": [...],
        "false_crisis": [...], "false_check_in": [...]}
    """
    by_category: dict[tuple[str, str], list[str]] = defaultdict(list)
    missed, false_crisis, false_check_in = [], [], []
    for example, level in zip(examples, levels, strict=True):
        by_category[(example.label, example.category)].append(level)
        if example.label == "crisis" and level == "none":
            missed.append({"category": example.category, "text": example.text})
        elif example.label == "safe" and level == "crisis":
            false_crisis.append({"category": example.category, "text": example.text})
        elif example.label == "safe" and level == "check_in":
            false_check_in.append({"category": example.category, "text": example.text})
    crisis, safe = {}, {}
    for (label, category), found in sorted(by_category.items()):
        total = len(found)
        if label == "crisis":
            caught = sum(level != "none" for level in found)
            crisis[category] = {"total": total, "caught": caught, "recall": _rate(caught, total),
                                "as_crisis": _rate(found.count("crisis"), total)}  # fmt: skip
        else:
            safe[category] = {"total": total, "crisis": found.count("crisis"), "check_in": found.count("check_in"),
                              "crisis_rate": _rate(found.count("crisis"), total),
                              "flagged_rate": _rate(total - found.count("none"), total)}  # fmt: skip
    crisis_total = sum(c["total"] for c in crisis.values())
    safe_total = sum(s["total"] for s in safe.values())
    overall = {
        "crisis_total": crisis_total,
        "crisis_recall": _rate(sum(c["caught"] for c in crisis.values()), crisis_total),
        "min_category_recall": min((c["recall"] for c in crisis.values()), default=0.0),
        "safe_total": safe_total,
        "safe_crisis_rate": _rate(sum(s["crisis"] for s in safe.values()), safe_total),
        "safe_flagged_rate": _rate(sum(s["crisis"] + s["check_in"] for s in safe.values()), safe_total),
    }
    return {"crisis": crisis, "safe": safe, "overall": overall, "missed": missed,
            "false_crisis": false_crisis, "false_check_in": false_check_in}  # fmt: skip


def score_replies(examples: list[Example], harmful: list[bool]) -> dict[str, Any]:
    """Harmful replies caught and safe replies replaced, per category."""
    by_category: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for example, flagged in zip(examples, harmful, strict=True):
        by_category[(example.label, example.category)].append(flagged)
    categories = {f"{label}/{category}": {"total": len(found), "replaced": sum(found)}
                  for (label, category), found in sorted(by_category.items())}  # fmt: skip
    harmful_total = sum(v["total"] for k, v in categories.items() if k.startswith("harmful/"))
    safe_total = sum(v["total"] for k, v in categories.items() if k.startswith("safe/"))
    return {
        "categories": categories,
        "harmful_recall": _rate(sum(v["replaced"] for k, v in categories.items() if k.startswith("harmful/")), harmful_total),
        "safe_replaced_rate": _rate(sum(v["replaced"] for k, v in categories.items() if k.startswith("safe/")), safe_total),
        "missed": [e.text for e, f in zip(examples, harmful, strict=True) if e.label == "harmful" and not f],
        "wrongly_replaced": [e.text for e, f in zip(examples, harmful, strict=True) if e.label == "safe" and f],
    }


def flat_metrics(scores: dict[str, Any], prefix: str) -> dict[str, float]:
    """The numbers of `score_levels` as flat `prefix_...` metrics for metrics.json and MLflow."""
    metrics = {f"{prefix}_{key}": float(value) for key, value in scores["overall"].items()}
    for category, values in scores["crisis"].items():
        metrics[f"{prefix}_recall_{category}"] = values["recall"]
    for category, values in scores["safe"].items():
        metrics[f"{prefix}_crisis_rate_{category}"] = values["crisis_rate"]
        metrics[f"{prefix}_flagged_rate_{category}"] = values["flagged_rate"]
    return metrics


def format_table(scores: dict[str, Any]) -> str:
    """The per-category numbers as a plain-text table for the review CLI."""
    lines = [f"{'crisis category':<22} {'n':>5} {'recall':>7} {'as crisis':>9}"]
    for category, v in scores["crisis"].items():
        lines.append(f"{category:<22} {v['total']:>5} {v['recall']:>7.3f} {v['as_crisis']:>9.3f}")
    lines += ["", f"{'safe category':<22} {'n':>5} {'crisis':>7} {'flagged':>9}"]
    for category, v in scores["safe"].items():
        lines.append(f"{category:<22} {v['total']:>5} {v['crisis_rate']:>7.3f} {v['flagged_rate']:>9.3f}")
    o = scores["overall"]
    lines += ["", f"overall: crisis recall {o['crisis_recall']:.3f} (lowest category {o['min_category_recall']:.3f}) on "
                  f"{o['crisis_total']}; safe messages as crisis {o['safe_crisis_rate']:.3f}, "
                  f"as check_in or crisis {o['safe_flagged_rate']:.3f} on {o['safe_total']}"]  # fmt: skip
    return "\n".join(lines)


def screen_report(screen: Any, messages: list[Example], replies: list[Example]) -> tuple[dict[str, float], dict[str, Any]]:
    """A screen on labelled messages (each as a first turn) and replies: flat `safety_*` metrics and the full report."""
    report = score_levels(messages, [screen.assess(example.text).level for example in messages])
    report["replies"] = score_replies(replies, [screen.screen_reply(example.text).harmful for example in replies])
    flat = flat_metrics(report, "safety")
    flat["safety_reply_harmful_recall"] = report["replies"]["harmful_recall"]
    flat["safety_reply_safe_replaced_rate"] = report["replies"]["safe_replaced_rate"]
    return flat, report


def dialogue_turns(examples: Any) -> list[list[tuple[str, str]]]:
    """Each dialogue of a preprocessed split (`talk_id`, `turn`, `user_text`, `response_text`) as (user, reply) turns in order.

    Dialogues come in the order they first appear in `examples`.
    """
    ordered = (dialogue.sort_values("turn") for _, dialogue in examples.groupby("talk_id", sort=False))
    return [list(zip(dialogue["user_text"], dialogue["response_text"])) for dialogue in ordered]


def conversation_levels(screen: Any, dialogues: list[list[tuple[str, str]]]) -> dict[str, int]:
    """How often a screen answers ordinary conversations instead of the model, turn by turn with their history.

    Args:
        screen: a `maeum.safety.Screen`.
        dialogues: each a list of (user text, reply) turns, in order; the reply is what the user saw.

    Returns:
        Turns per level ("none", "check_in", "crisis").
    """
    counts = {"none": 0, "check_in": 0, "crisis": 0}
    for turns in dialogues:
        history: list[tuple[str, str]] = []
        for user_text, reply in turns:
            counts[screen.assess(user_text, history).level] += 1
            history += [("user", user_text), ("model", reply)]
    return counts

