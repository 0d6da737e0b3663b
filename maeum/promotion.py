"""The decisions around the registry, as pure functions: skip a run, promote a model, write its card.

Promotion compares models measured on the *same* data: the challenger's validation split, with the
current champion re-scored on it (its own base, tokenizer and adapter) in the same flow run. The
measure is bits per character of the reference replies, which two tokenizers can share. A
challenger is promoted only if every check passes:

    beats the champion   bpc at least `promotion.min_improvement` (relative) lower, and lower in at
                         least `promotion.confidence` of paired bootstrap resamples of the dialogues
    beats its own base   bpc below the base's
    keeps the screen     its crisis screen is not worse than the champion's on the held-out set
    keeps its replies    chrF, emotion reflection and end-of-turn rate at most
                         `promotion.generation_tolerance` (relative) below the champion's; for the
                         two rates (shares of the generated replies) a larger drop counts only when
                         it is beyond sampling noise at `promotion.confidence` (one-sided
                         two-proportion test over the replies), so 1 reply of 4 decides nothing

The first model has no champion to beat; it still has to beat its base. Every check and its
numbers go into the decision, which goes onto the MLflow run, the model version and the flow's
summary.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from dataclasses import dataclass, field
from typing import Any

from maeum.config import PromotionParams

GENERATION_CHECKS = ("chrf", "emotion_reflection", "end_of_turn_rate")
RATE_CHECKS = ("emotion_reflection", "end_of_turn_rate")  # shares of `generations` replies
# Held-out numbers of the screen a model is served with: (name, whether higher is better).
SAFETY_CHECKS = (("safety_crisis_recall", True), ("safety_min_category_recall", True), ("safety_safe_crisis_rate", False),
                 ("safety_safe_flagged_rate", False))  # fmt: skip


@dataclass(frozen=True)
class Champion:
    """The registered version the `champion` alias points at, with what it was trained on."""

    version: str
    run_id: str | None
    data_version: str | None
    params_hash: str | None


@dataclass(frozen=True)
class SkipDecision:
    skip: bool
    reason: str


def decide_skip(champion: Champion | None, data_version: str, params_hash: str, force: bool) -> SkipDecision:
    """Whether a training run would only reproduce the champion.

    Args:
        champion: the current champion, or None when there is none yet.
        data_version: MD5 of the raw corpus this run would train on.
        params_hash: `tracking.params_hash` of this run's parameters.
        force: train even when nothing changed.

    Returns:
        skip=True only when the champion was trained on the same data and parameters and force is off.
    """
    if force:
        return SkipDecision(False, "forced")
    if champion is None:
        return SkipDecision(False, "no champion yet")
    changed = [name for name, ours, theirs in (("data", data_version, champion.data_version),
                                               ("params", params_hash, champion.params_hash)) if ours != theirs]  # fmt: skip
    if changed:
        return SkipDecision(False, f"{' and '.join(changed)} changed since champion v{champion.version}")
    return SkipDecision(True, "nothing changed")


@dataclass(frozen=True)
class Measured:
    """One model's numbers on the challenger's validation data (and the held-out safety set)."""

    val_bpc: float
    generation: dict[str, float]
    safety: dict[str, float]
    data_version: str | None = None


@dataclass(frozen=True)
class Evidence:
    """Everything the promotion rule reads.

    Attributes:
        challenger: the new model, from its evaluate stage.
        base_bpc: its base's bits per character on the same data.
        champion: the current champion re-scored on the same data; None when there is no champion.
        champion_version: its version number.
        bootstrap: `maeum.scorecard.paired_bootstrap` of challenger (a) against champion (b).
    """

    challenger: Measured
    base_bpc: float
    champion: Measured | None = None
    champion_version: str | None = None
    bootstrap: dict[str, float] | None = None


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Promotion:
    """The decision: promote or not, and every check with its numbers."""

    promote: bool
    reason: str
    checks: tuple[Check, ...] = field(default_factory=tuple)
    champion_version: str | None = None
    challenger_bpc: float | None = None
    champion_bpc: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "reason": self.reason, "champion_version": self.champion_version,
                "challenger_bpc": self.challenger_bpc, "champion_bpc": self.champion_bpc,
                "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in self.checks]}  # fmt: skip


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def decide_promotion(evidence: Evidence, rule: PromotionParams) -> Promotion:
    """Applies the promotion rule (module docstring) to measured evidence.

    Args:
        evidence: the challenger's, its base's and the re-scored champion's numbers.
        rule: the `promotion:` section (margin, confidence, tolerance).

    Returns:
        The decision with one `Check` per rule.
    """
    challenger, champion = evidence.challenger, evidence.champion
    version = evidence.champion_version
    if not _finite(challenger.val_bpc):
        check = Check("evaluated", False, f"challenger has no valid val_bpc ({challenger.val_bpc})")
        return Promotion(False, check.detail, (check,), version, challenger.val_bpc)
    checks = [Check("beats its base", challenger.val_bpc < evidence.base_bpc,
                    f"val_bpc {challenger.val_bpc:.4f} vs base {evidence.base_bpc:.4f}")]  # fmt: skip
    if champion is None:
        checks.append(Check("beats the champion", True, "no champion yet: first model"))
    else:
        boot = evidence.bootstrap or {}
        improvement = boot.get("relative_improvement", (champion.val_bpc - challenger.val_bpc) / champion.val_bpc)
        share = boot.get("share_a_better", 0.0)
        checks.append(Check(
            "beats the champion", improvement >= rule.min_improvement and share >= rule.confidence,
            f"val_bpc {challenger.val_bpc:.4f} vs champion v{version} re-scored on this data {champion.val_bpc:.4f}: "
            f"{improvement:+.2%} (need >= {rule.min_improvement:.2%}), better in {share:.1%} of "
            f"{'bootstrap resamples' if boot else 'cases'} (need >= {rule.confidence:.0%})"
            + (f", 95% interval {boot['interval_low']:+.2%}..{boot['interval_high']:+.2%}" if boot else ""),
        ))  # fmt: skip
        worse = [f"{name} {challenger.safety.get(name, math.nan):.3f} vs {champion.safety.get(name, math.nan):.3f}"
                 for name, higher_is_better in SAFETY_CHECKS
                 if not _not_worse(challenger.safety.get(name), champion.safety.get(name), higher_is_better, 0.0)]  # fmt: skip
        checks.append(Check("keeps the crisis screen", not worse,
                            "held-out screen " + ("; ".join(worse) + " (worse than the champion's)" if worse
                                                  else "as good as the champion's or better")))  # fmt: skip
        regressed = [f"{name} {challenger.generation.get(name, math.nan):.3f} vs {champion.generation.get(name, math.nan):.3f}"
                     for name in GENERATION_CHECKS if _replies_regressed(name, challenger, champion, rule)]  # fmt: skip
        checks.append(Check("keeps its replies", not regressed,
                            ("; ".join(regressed) + f" (more than {rule.generation_tolerance:.0%} below the champion"
                             f" and, for rates, beyond noise at {rule.confidence:.0%})")
                            if regressed else f"{', '.join(GENERATION_CHECKS)} within {rule.generation_tolerance:.0%} "
                                              "of the champion, better, or within sampling noise"))  # fmt: skip
    failed = [check for check in checks if not check.passed]
    reason = ("passes every check: " + "; ".join(c.detail for c in checks[:2])) if not failed else \
        "; ".join(f"{c.name} failed: {c.detail}" for c in failed)  # fmt: skip
    return Promotion(not failed, reason, tuple(checks), version, challenger.val_bpc, champion.val_bpc if champion else None)


def _replies_regressed(name: str, challenger: Measured, champion: Measured, rule: PromotionParams) -> bool:
    ours, theirs = challenger.generation.get(name), champion.generation.get(name)
    if _not_worse(ours, theirs, True, rule.generation_tolerance):
        return False
    if name not in RATE_CHECKS or not _finite(ours):
        return True
    counts = challenger.generation.get("generations"), champion.generation.get("generations")
    return not all(_finite(n) and n > 0 for n in counts) or drop_is_significant(ours, theirs, *counts, rule.confidence)


def drop_is_significant(ours: float, theirs: float, our_count: float, their_count: float, confidence: float) -> bool:
    """Whether rate `ours` (of `our_count` replies) is below `theirs` beyond sampling noise (one-sided z-test)."""
    pooled = (ours * our_count + theirs * their_count) / (our_count + their_count)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / our_count + 1 / their_count))
    if spread == 0:
        return ours < theirs
    return (theirs - ours) / spread > NormalDist().inv_cdf(confidence)


def _not_worse(ours: float | None, theirs: float | None, higher_is_better: bool, tolerance: float) -> bool:
    """Ours is at least theirs (or at most, when lower is better), allowing a relative `tolerance`."""
    if not _finite(theirs):
        return True  # nothing to keep
    if not _finite(ours):
        return False
    if higher_is_better:
        return ours >= theirs * (1 - tolerance) - 1e-12
    return ours <= theirs * (1 + tolerance) + 1e-12


# === The model card ===


def model_card(name: str, version: str, facts: dict[str, Any], metrics: dict[str, float], decision: Promotion | None,
               samples: list[dict[str, str]], feedback: dict[str, Any] | None = None) -> str:  # fmt: skip
    """Markdown for a registered version: what it is, what it was trained on, how it measures, what to watch for.

    Args:
        name, version: the registered model.
        facts: data version and size, base, run id, main parameters.
        metrics: evaluate's numbers (`*_base`, `*_tuned`, `safety_*`).
        decision: the promotion decision with the re-scored champion, or None.
        samples: a few replies (prompt, reference, tuned).
        feedback: reviewers' ratings of this version (`maeum.feedback`), when there are any.
    """
    lines = [f"# {name} v{version}", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in facts.items()]
    lines += ["", "## Against its base (validation split)", "", "| metric | base | tuned |", "|---|---|---|"]
    for metric in ("val_bpc", "val_loss", "chrf", "distinct_2", "emotion_reflection", "exploration_rate", "end_of_turn_rate",
                   "mid_word_start_rate"):  # fmt: skip
        if f"{metric}_tuned" in metrics:
            lines.append(f"| {metric} | {metrics[f'{metric}_base']:.4f} | {metrics[f'{metric}_tuned']:.4f} |")
    if decision is not None:
        lines += ["", "## Promotion", "", f"**{'promoted' if decision.promote else 'not promoted'}**: {decision.reason}", ""]
        lines += [f"- {'✓' if c.passed else '✗'} {c.name}: {c.detail}" for c in decision.checks]
    lines += ["", "## Crisis screen (held-out messages)", ""]
    lines += [f"- {key[len('safety_'):]}: {value:.3f}" for key, value in metrics.items()
              if key.startswith("safety_") and not key.startswith(("safety_recall_", "safety_crisis_rate_", "safety_flagged_rate_"))]  # fmt: skip
    if feedback:
        lines += ["", reviewers_section(feedback).rstrip()]
    lines += ["", "## Sample replies", ""]
    for sample in samples:
        lines += [f"- **user:** {sample['prompt'][-200:]!s}".replace("\n", " "), f"  - reference: {sample['reference']}",
                  f"  - model: {sample['reply'] or '(empty)'}"]  # fmt: skip
    lines += ["", "## Known limits", "",
              "- Trained and measured on the corpus in `data` only; numbers on other conversations will differ.",
              "- The crisis screen's held-out set was written by the project, not by people in crisis: its numbers are "
              "an estimate, not a guarantee. A crisis message is answered by the reviewed referral text, never by the model.",
              "- Generation metrics are computed on a sample of validation prompts with greedy decoding.", ""]  # fmt: skip
    return "\n".join(lines)


REVIEWERS_HEADING = "## Reviewers"


def reviewers_section(feedback: Any) -> str:
    """The card's section on what reviewers said of a version's served replies (`maeum.feedback.VersionFeedback`)."""
    helpful = "-" if feedback.helpful_rate is None else f"{feedback.helpful_rate:.0%}"
    empathy = "-" if feedback.mean_empathy is None else f"{feedback.mean_empathy:.2f} / 5"
    return (f"{REVIEWERS_HEADING}\n\n{feedback.rated} rated replies of {feedback.turns} served turns; "
            f"helpful {helpful}, mean empathy {empathy} (`maeum registry report`).\n")


def with_reviewers(card: str, feedback: Any) -> str:
    """`card` with its reviewers section added, or replaced by the current numbers."""
    section = reviewers_section(feedback)
    if REVIEWERS_HEADING in card:
        head, _, rest = card.partition(REVIEWERS_HEADING)
        tail = rest.split("\n## ", 1)
        return head + section + ("\n## " + tail[1] if len(tail) > 1 else "")
    head, marker, rest = card.partition("## Sample replies")
    return head + section + "\n" + marker + rest if marker else card.rstrip() + "\n\n" + section

