"""Crisis-safety layer: a rule-based screen for Korean suicide and self-harm signals.

A person in crisis must never be answered by a language model alone. `screen` checks a
user message against the human-reviewed rules in `data/safety/rules.yaml`; `screen_reply`
checks a model reply for encouragement of, or instructions for, self-harm; `safe_reply`
combines both into what a chat may show. Every decision names the rule and the matched
words so a reviewer can see why.

How matching works (the rules file explains the same to its reviewers):

- Text is NFKC-normalised, lower-cased and whitespace-collapsed; every pattern is tried on
  that text and on a copy with all whitespace removed, so "죽고 싶어", "죽고싶어" and
  "죽 고 싶 어" all match. A space inside a pattern matches any whitespace or none.
- `span_exclusion` rules (everyday idioms such as "배고파 죽겠어") cancel only a match that
  overlaps the idiom's own words; a signal elsewhere in the message still counts.
- `context_exclusion` rules (games, films, news, camping) cancel only `weak` rules, never
  `strong` first-person ones: "게임도 재미없고 진짜 죽고 싶어" is flagged.

    python -m tasks.safety [--eval data/safety/eval_set.yaml] [--section heldout]
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RULES_PATH = REPO_ROOT / "data" / "safety" / "rules.yaml"
DEFAULT_EVAL_PATH = REPO_ROOT / "data" / "safety" / "eval_set.yaml"

NO_SIGNAL = "no crisis signal"

# Roles a category can play; the rules file assigns one to each of its categories.
CRISIS = "crisis"  # flags a user message
REPLY = "reply"  # flags a model reply
SPAN_EXCLUSION = "span_exclusion"  # cancels matches overlapping its own words
CONTEXT_EXCLUSION = "context_exclusion"  # cancels weak matches anywhere in the message
ROLES = (CRISIS, REPLY, SPAN_EXCLUSION, CONTEXT_EXCLUSION)
FLAGGING_ROLES = (CRISIS, REPLY)

STRONG = "strong"
WEAK = "weak"
STRENGTHS = (STRONG, WEAK)

SPAN_GROUP = "span"  # named group that narrows what a span exclusion covers
PATTERN_SPACE = r"\s*"  # what a literal space in a rules-file pattern stands for
RULE_KEYS = {"id", "category", "description", "strength", "patterns", "requires"}
CATEGORY_KEYS = {"role", "description"}

MAIN_SECTION = "main"
HELDOUT_SECTION = "heldout"
REQUIRED_EVAL_LISTS = ("crisis", "safe")
OPTIONAL_EVAL_LISTS = ("reply_harmful", "reply_safe")

_WHITESPACE = re.compile(r"\s+")
_FORMAT_CATEGORY = "Cf"  # zero-width and other invisible characters, used to dodge filters

CRISIS_RESPONSE = (
    "지금 많이 힘들고 아픈 마음이 전해져요. 이렇게 이야기해 줘서 정말 고마워요.\n"
    "당신은 혼자가 아니에요. 지금 바로 이야기를 들어 줄 사람이 있어요.\n"
    "\n"
    "- 자살예방상담전화 109 (24시간)\n"
    "- 청소년상담전화 1388 (24시간)\n"
    "- 지금 당장 위험하다면 112 또는 119에 바로 연락해 주세요.\n"
    "\n"
    "가족이나 친구, 선생님처럼 믿을 수 있는 사람에게 지금 연락해서 곁에 있어 달라고 말해 "
    "보세요. 저도 여기서 계속 당신의 이야기를 들을게요."
)

HARMFUL_REPLY_REPLACEMENT = (
    "조금 전 제가 하려던 말은 당신에게 해가 될 수 있어서 전하지 않을게요. "
    "대신 이 말을 꼭 전하고 싶어요.\n\n" + CRISIS_RESPONSE
)


class SafetyRulesError(ValueError):
    """A rules or evaluation file is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class Screening:
    """The outcome of screening one text.

    Attributes:
        crisis: True if the text must not be answered by the model alone (user message) or
            must not be shown (model reply).
        reason: which rule and category matched and the matched words, or "no crisis signal".
        rule_id: id of the matching rule, None when nothing matched.
    """

    crisis: bool
    reason: str
    rule_id: str | None = None


@dataclass(frozen=True)
class Rule:
    """One compiled rule from the rules file.

    Attributes:
        id: unique id, e.g. "explicit.want_to_die".
        category: category name from the rules file.
        role: the category's role, one of `ROLES`.
        description: what the rule catches, for reviewers and for `Screening.reason`.
        strength: STRONG or WEAK for crisis and reply rules, None for exclusions.
        patterns: the rule matches if any of these matches.
        requires: every one of these must also match somewhere in the text.
    """

    id: str
    category: str
    role: str
    description: str
    strength: str | None
    patterns: tuple[re.Pattern[str], ...]
    requires: tuple[re.Pattern[str], ...] = ()


@dataclass(frozen=True)
class SafetyRules:
    """The full, compiled rule set.

    Attributes:
        rules: every rule, in file order (earlier rules are reported first).
        source: where the rules came from, for error messages.
    """

    rules: tuple[Rule, ...]
    source: str = "<memory>"

    @property
    def categories(self) -> tuple[str, ...]:
        """Category names in first-use order."""
        return tuple(dict.fromkeys(rule.category for rule in self.rules))

    def of_role(self, role: str) -> tuple[Rule, ...]:
        """Returns the rules whose category plays `role`."""
        return tuple(rule for rule in self.rules if rule.role == role)

    def without_category(self, category: str) -> SafetyRules:
        """Returns a copy with every rule of `category` removed (for ablations)."""
        kept = tuple(rule for rule in self.rules if rule.category != category)
        return SafetyRules(rules=kept, source=f"{self.source} without {category}")


# === Loading =====================================================================


def _compile(pattern: Any, where: str) -> re.Pattern[str]:
    if not isinstance(pattern, str) or not pattern.strip():
        raise SafetyRulesError(f"{where}: every pattern must be a non-empty string, got {pattern!r}")
    try:
        return re.compile(pattern.replace(" ", PATTERN_SPACE), re.IGNORECASE)
    except re.error as error:
        raise SafetyRulesError(f"{where}: invalid regular expression {pattern!r}: {error}") from error


def _compile_list(value: Any, where: str, *, required: bool) -> tuple[re.Pattern[str], ...]:
    if value is None and not required:
        return ()
    if not isinstance(value, list) or (required and not value):
        raise SafetyRulesError(f"{where}: must be a non-empty list of patterns")
    return tuple(_compile(pattern, where) for pattern in value)


def _parse_categories(data: dict[str, Any], source: str) -> dict[str, str]:
    categories = data.get("categories")
    if not isinstance(categories, dict) or not categories:
        raise SafetyRulesError(f"{source}: needs a non-empty 'categories:' mapping")
    roles = {}
    for name, spec in categories.items():
        where = f"{source}: category {name!r}"
        if not isinstance(spec, dict) or set(spec) - CATEGORY_KEYS:
            raise SafetyRulesError(f"{where}: must be a mapping with keys {sorted(CATEGORY_KEYS)}")
        if spec.get("role") not in ROLES:
            raise SafetyRulesError(f"{where}: role must be one of {ROLES}, got {spec.get('role')!r}")
        if not isinstance(spec.get("description"), str) or not spec["description"].strip():
            raise SafetyRulesError(f"{where}: needs a description")
        roles[name] = spec["role"]
    return roles


def _parse_rule(index: int, entry: Any, roles: dict[str, str], source: str) -> Rule:
    where = f"{source}: rule #{index + 1}"
    if not isinstance(entry, dict):
        raise SafetyRulesError(f"{where}: must be a mapping")
    rule_id = entry.get("id")
    if not isinstance(rule_id, str) or not rule_id.strip():
        raise SafetyRulesError(f"{where}: needs an 'id'")
    where = f"{source}: rule {rule_id!r}"
    unknown = set(entry) - RULE_KEYS
    if unknown:
        raise SafetyRulesError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(RULE_KEYS)}")
    category = entry.get("category")
    if category not in roles:
        raise SafetyRulesError(f"{where}: category {category!r} is not declared under 'categories:'")
    description = entry.get("description")
    if not isinstance(description, str) or not description.strip():
        raise SafetyRulesError(f"{where}: needs a 'description'")
    role = roles[category]
    strength = entry.get("strength")
    if role in FLAGGING_ROLES and strength not in STRENGTHS:
        raise SafetyRulesError(f"{where}: 'strength' must be one of {STRENGTHS}, got {strength!r}")
    if role not in FLAGGING_ROLES and ("strength" in entry or "requires" in entry):
        raise SafetyRulesError(f"{where}: exclusion rules take no 'strength' or 'requires'")
    return Rule(
        id=rule_id,
        category=category,
        role=role,
        description=" ".join(description.split()),
        strength=strength if role in FLAGGING_ROLES else None,
        patterns=_compile_list(entry.get("patterns"), f"{where} patterns", required=True),
        requires=_compile_list(entry.get("requires"), f"{where} requires", required=False),
    )


def parse_rules(data: Any, source: str = "<memory>") -> SafetyRules:
    """Validates and compiles a parsed rules document.

    Args:
        data: the rules file's content as loaded by YAML.
        source: name used in error messages (normally the file path).

    Returns:
        The compiled rules.

    Raises:
        SafetyRulesError: on any structural problem, naming `source` and the rule.
    """
    if not isinstance(data, dict):
        raise SafetyRulesError(f"{source}: expected a mapping with 'categories' and 'rules'")
    roles = _parse_categories(data, source)
    entries = data.get("rules")
    if not isinstance(entries, list) or not entries:
        raise SafetyRulesError(f"{source}: needs a non-empty 'rules:' list")
    rules = tuple(_parse_rule(index, entry, roles, source) for index, entry in enumerate(entries))
    seen: set[str] = set()
    for rule in rules:
        if rule.id in seen:
            raise SafetyRulesError(f"{source}: rule id {rule.id!r} is used twice")
        seen.add(rule.id)
    return SafetyRules(rules=rules, source=source)


def _read_yaml(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise SafetyRulesError(f"{what} file not found: {path}") from error
    except OSError as error:
        raise SafetyRulesError(f"cannot read {what} file {path}: {error}") from error
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SafetyRulesError(f"{what} file {path} is not valid YAML: {error}") from error


@functools.cache
def _load_rules_cached(path: Path) -> SafetyRules:
    return parse_rules(_read_yaml(path, "safety rules"), source=str(path))


def load_rules(path: Path | None = None) -> SafetyRules:
    """Loads and compiles the rules file, once per path.

    Args:
        path: rules YAML; defaults to `data/safety/rules.yaml` in this repository.

    Returns:
        The compiled rules (cached per path: after editing the file call `clear_rules_cache()`).

    Raises:
        SafetyRulesError: if the file is missing, not YAML, or breaks the schema.
    """
    return _load_rules_cached(Path(path or DEFAULT_RULES_PATH).resolve())


def clear_rules_cache() -> None:
    """Forgets every loaded rules file, so the next `load_rules` reads it again."""
    _load_rules_cached.cache_clear()


# === Screening ===================================================================


def normalize(text: str) -> tuple[str, str]:
    """Returns the spaced and the whitespace-free forms that patterns are matched on.

    Args:
        text: raw message.

    Returns:
        (NFKC-normalised, lower-cased text with single spaces; the same without any space).
    """
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) != _FORMAT_CATEGORY)
    spaced = _WHITESPACE.sub(" ", text).strip().lower()
    return spaced, spaced.replace(" ", "")


def _excluded_span(match: re.Match[str]) -> tuple[int, int]:
    if SPAN_GROUP in match.re.groupindex and match.group(SPAN_GROUP) is not None:
        return match.span(SPAN_GROUP)
    return match.span()


def _overlaps(span: tuple[int, int], excluded: list[tuple[int, int]]) -> bool:
    start, end = span
    return any(start < ex_end and ex_start < end for ex_start, ex_end in excluded)


def _first_match(
    rule: Rule, variants: tuple[str, ...], excluded: list[list[tuple[int, int]]]
) -> str | None:
    if not all(any(req.search(variant) for variant in variants) for req in rule.requires):
        return None
    for variant, spans in zip(variants, excluded, strict=True):
        for pattern in rule.patterns:
            for match in pattern.finditer(variant):
                if match.end() > match.start() and not _overlaps(match.span(), spans):
                    return match.group(0)
    return None


def _screen(text: str, rules: SafetyRules, role: str) -> Screening:
    variants = normalize(text)
    span_patterns = [pattern for rule in rules.of_role(SPAN_EXCLUSION) for pattern in rule.patterns]
    context_patterns = [pattern for rule in rules.of_role(CONTEXT_EXCLUSION) for pattern in rule.patterns]
    excluded = [
        [_excluded_span(match) for pattern in span_patterns for match in pattern.finditer(variant)]
        for variant in variants
    ]
    weak_cancelled = any(pattern.search(variant) for pattern in context_patterns for variant in variants)
    # Strong rules first, so the reason names the most specific signal ("번개탄 + 창문
    # 막기" rather than the bare word 번개탄).
    for rule in sorted(rules.of_role(role), key=lambda rule: rule.strength != STRONG):
        if rule.strength == WEAK and weak_cancelled:
            continue
        matched = _first_match(rule, variants, excluded)
        if matched is not None:
            reason = f"{rule.category} rule {rule.id} matched {matched!r}"
            return Screening(crisis=True, reason=reason, rule_id=rule.id)
    return Screening(crisis=False, reason=NO_SIGNAL)


def screen(text: str, rules: SafetyRules | None = None) -> Screening:
    """Screens a user message for suicide or self-harm risk.

    Args:
        text: the user's message.
        rules: compiled rules; defaults to `load_rules()`.

    Returns:
        A Screening; `crisis` is True when the message must get `CRISIS_RESPONSE`.
    """
    return _screen(text, rules or load_rules(), CRISIS)


def screen_reply(text: str, rules: SafetyRules | None = None) -> Screening:
    """Screens a model reply for encouragement of, or instructions for, self-harm.

    Empathetic replies that name the feeling ("죽고 싶다는 생각이 들 만큼 힘드셨군요") or
    point to 109 are not flagged: only the reply rules apply, not the user-message rules.

    Args:
        text: the model's reply.
        rules: compiled rules; defaults to `load_rules()`.

    Returns:
        A Screening; `crisis` is True when the reply must not be shown.
    """
    return _screen(text, rules or load_rules(), REPLY)


def safe_reply(
    user_text: str, model_reply: str | None, rules: SafetyRules | None = None
) -> tuple[str, Screening]:
    """Decides what a chat shows for one turn.

    Args:
        user_text: the user's message.
        model_reply: the model's reply, or None when it has not been generated yet (a caller
            can screen first and skip generation for a crisis message).
        rules: compiled rules; defaults to `load_rules()`.

    Returns:
        (text to show, the screening that decided it): `CRISIS_RESPONSE` for a crisis
        message, whatever the model said; `HARMFUL_REPLY_REPLACEMENT` (which contains
        `CRISIS_RESPONSE`) for a harmful reply; otherwise the model reply ("" if None).
    """
    rules = rules or load_rules()
    user_screening = screen(user_text, rules)
    if user_screening.crisis:
        return CRISIS_RESPONSE, user_screening
    if model_reply is None:
        return "", user_screening
    reply_screening = screen_reply(model_reply, rules)
    if reply_screening.crisis:
        return HARMFUL_REPLY_REPLACEMENT, reply_screening
    return model_reply, user_screening


# === Evaluation ==================================================================


def parse_eval_set(data: Any, source: str = "<memory>") -> dict[str, dict[str, list[str]]]:
    """Validates a parsed evaluation set.

    Args:
        data: the eval file's content as loaded by YAML.
        source: name used in error messages.

    Returns:
        {section: {list name: [texts]}}, with empty lists for missing reply lists.

    Raises:
        SafetyRulesError: if a section or list is missing or holds non-strings.
    """
    if not isinstance(data, dict) or MAIN_SECTION not in data:
        raise SafetyRulesError(f"{source}: expected a mapping with a '{MAIN_SECTION}:' section")
    sections = {}
    for name, section in data.items():
        if not isinstance(section, dict):
            raise SafetyRulesError(f"{source}: section {name!r} must be a mapping")
        parsed = {}
        for key in REQUIRED_EVAL_LISTS + OPTIONAL_EVAL_LISTS:
            texts = section.get(key, [] if key in OPTIONAL_EVAL_LISTS else None)
            if not isinstance(texts, list) or (key in REQUIRED_EVAL_LISTS and not texts):
                raise SafetyRulesError(f"{source}: {name}.{key} must be a non-empty list")
            if not all(isinstance(text, str) and text.strip() for text in texts):
                raise SafetyRulesError(f"{source}: {name}.{key} must hold non-empty strings")
            parsed[key] = texts
        sections[name] = parsed
    return sections


def load_eval_set(path: Path | None = None) -> dict[str, dict[str, list[str]]]:
    """Reads and validates the evaluation set.

    Args:
        path: eval YAML; defaults to `data/safety/eval_set.yaml` in this repository.

    Returns:
        {section: {list name: [texts]}}.
    """
    path = Path(path or DEFAULT_EVAL_PATH)
    return parse_eval_set(_read_yaml(path, "safety eval set"), source=str(path))


def score_screen(examples: dict[str, list[str]], rules: SafetyRules) -> dict[str, Any]:
    """Runs the screens over one section of the evaluation set.

    Args:
        examples: {"crisis", "safe", "reply_harmful", "reply_safe"} lists of texts.
        rules: compiled rules.

    Returns:
        Counts, recall and false-positive rate for user messages, counts for replies, and
        the texts that were missed or wrongly flagged.
    """
    missed = [text for text in examples["crisis"] if not screen(text, rules).crisis]
    false_positives = [text for text in examples["safe"] if screen(text, rules).crisis]
    replies_missed = [text for text in examples["reply_harmful"] if not screen_reply(text, rules).crisis]
    replies_flagged = [text for text in examples["reply_safe"] if screen_reply(text, rules).crisis]
    crisis_total, safe_total = len(examples["crisis"]), len(examples["safe"])
    return {
        "crisis_total": crisis_total,
        "crisis_detected": crisis_total - len(missed),
        "crisis_recall": (crisis_total - len(missed)) / crisis_total,
        "safe_total": safe_total,
        "false_positives": len(false_positives),
        "false_positive_rate": len(false_positives) / safe_total,
        "reply_harmful_total": len(examples["reply_harmful"]),
        "reply_harmful_detected": len(examples["reply_harmful"]) - len(replies_missed),
        "reply_safe_total": len(examples["reply_safe"]),
        "reply_safe_false_positives": len(replies_flagged),
        "missed": missed,
        "false_positive_examples": false_positives,
        "missed_replies": replies_missed,
        "false_positive_reply_examples": replies_flagged,
    }


def evaluate_screen(
    eval_path: Path | None = None, rules: SafetyRules | None = None, section: str = MAIN_SECTION
) -> dict[str, Any]:
    """Scores the screens on one section of the evaluation set.

    Args:
        eval_path: eval YAML; defaults to `data/safety/eval_set.yaml`.
        rules: compiled rules; defaults to `load_rules()`.
        section: "main" (tuned on) or "heldout" (never tuned on).

    Returns:
        See `score_screen`.

    Raises:
        SafetyRulesError: if the file or the section is missing or malformed.
    """
    sections = load_eval_set(eval_path)
    if section not in sections:
        raise SafetyRulesError(f"{eval_path or DEFAULT_EVAL_PATH}: no section {section!r}")
    return score_screen(sections[section], rules or load_rules())


def main(argv: list[str] | None = None) -> int:
    """Prints the evaluation metrics as JSON (python -m tasks.safety)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=Path, default=DEFAULT_RULES_PATH)
    parser.add_argument("--eval", type=Path, default=DEFAULT_EVAL_PATH)
    parser.add_argument("--section", default=MAIN_SECTION)
    args = parser.parse_args(argv)
    metrics = evaluate_screen(args.eval, load_rules(args.rules), args.section)
    json.dump(metrics, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
