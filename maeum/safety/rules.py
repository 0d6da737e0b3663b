"""Reviewed rules: high-precision patterns for explicit language, read from data/safety/rules.yaml.

The rules file explains its syntax to its reviewers; in short:

- each rule has an id, a category (whose role is declared under `categories:`), a description a
  reviewer can check the patterns against and, for flagging roles, a strength;
- `patterns` are regular expressions tried on the canonical text and on its compact form
  (`maeum.safety.normalise.Views`); a literal space in a pattern means "any whitespace or none";
  `lemma_patterns` are tried on the morpheme view, so one pattern covers every conjugation;
- `requires` patterns must all match somewhere as well;
- `span_exclusion` rules (everyday idioms such as "배고파 죽겠어") cancel a match that overlaps
  their own words; `context_exclusion` rules (games, films, news, camping) cancel `weak` rules only;
- `third_person` rules say the message is about someone else's safety (친구가 유서를 ...).

A rule never decides alone: `maeum.safety.screen` combines its hits with the classifier.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from maeum.safety.normalise import Views

# Roles a category can play; the rules file assigns one to each of its categories.
CRISIS = "crisis"  # a risk signal in a user message
REPLY = "reply"  # a model reply that must not be shown
THIRD_PERSON = "third_person"  # the message is about another person's safety
SPAN_EXCLUSION = "span_exclusion"  # cancels matches overlapping its own words
CONTEXT_EXCLUSION = "context_exclusion"  # cancels weak matches anywhere in the message
ROLES = (CRISIS, REPLY, THIRD_PERSON, SPAN_EXCLUSION, CONTEXT_EXCLUSION)
FLAGGING_ROLES = (CRISIS, REPLY)

STRONG = "strong"
WEAK = "weak"
STRENGTHS = (STRONG, WEAK)

SPAN_GROUP = "span"  # named group that narrows what a span exclusion covers
PATTERN_SPACE = r"\s*"  # what a literal space in a rules-file pattern stands for
RULE_KEYS = {"id", "category", "description", "strength", "patterns", "lemma_patterns", "requires"}
CATEGORY_KEYS = {"role", "description"}


class SafetyConfigError(ValueError):
    """A safety file (rules, lexicon, responses, classifier) is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Rule:
    """One compiled rule from the rules file.

    Attributes:
        id: unique id, e.g. "explicit.want_to_die".
        category: category name from the rules file.
        role: the category's role, one of `ROLES`.
        description: what the rule catches, for reviewers and for reasons.
        strength: STRONG or WEAK for crisis and reply rules, None otherwise.
        patterns: surface patterns (text and compact views); the rule matches if any matches.
        lemma_patterns: patterns on the morpheme view.
        requires: every one of these must also match somewhere in the text.
    """

    id: str
    category: str
    role: str
    description: str
    strength: str | None
    patterns: tuple[re.Pattern[str], ...]
    lemma_patterns: tuple[re.Pattern[str], ...] = ()
    requires: tuple[re.Pattern[str], ...] = ()


@dataclass(frozen=True)
class RuleHit:
    """A rule that matched, and the words it matched."""

    rule: Rule
    matched: str

    def describe(self) -> str:
        return f"{self.rule.category} rule {self.rule.id} ({self.rule.strength or self.rule.role}) matched {self.matched!r}"


@dataclass(frozen=True)
class SafetyRules:
    """The compiled rule set.

    Attributes:
        rules: every rule, in file order.
        source: where the rules came from, for error messages.
    """

    rules: tuple[Rule, ...]
    source: str = "<memory>"

    def of_role(self, role: str) -> tuple[Rule, ...]:
        """The rules whose category plays `role`."""
        return tuple(rule for rule in self.rules if rule.role == role)

    def without_category(self, category: str) -> SafetyRules:
        """A copy with every rule of `category` removed (for ablations)."""
        kept = tuple(rule for rule in self.rules if rule.category != category)
        return SafetyRules(rules=kept, source=f"{self.source} without {category}")

    def hits(self, message: Views, role: str) -> list[RuleHit]:
        """Every rule of `role` that matches `message`, strong ones first, after the exclusions."""
        variants = (message.text, message.compact)
        excluded = [[_excluded_span(match) for rule in self.of_role(SPAN_EXCLUSION) for pattern in rule.patterns
                     for match in pattern.finditer(variant)] for variant in variants]  # fmt: skip
        weak_cancelled = any(pattern.search(variant) for rule in self.of_role(CONTEXT_EXCLUSION)
                             for pattern in rule.patterns for variant in variants)  # fmt: skip
        found = []
        for rule in sorted(self.of_role(role), key=lambda rule: rule.strength != STRONG):
            if rule.strength == WEAK and weak_cancelled:
                continue
            matched = _first_match(rule, message, variants, excluded)
            if matched is not None:
                found.append(RuleHit(rule, matched))
        return found


# === Loading =====================================================================


def _compile(pattern: Any, where: str) -> re.Pattern[str]:
    if not isinstance(pattern, str) or not pattern.strip():
        raise SafetyConfigError(f"{where}: every pattern must be a non-empty string, got {pattern!r}")
    try:
        return re.compile(pattern.replace(" ", PATTERN_SPACE), re.IGNORECASE)
    except re.error as error:
        raise SafetyConfigError(f"{where}: invalid regular expression {pattern!r}: {error}") from error


def _compile_list(value: Any, where: str) -> tuple[re.Pattern[str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise SafetyConfigError(f"{where}: must be a non-empty list of patterns")
    return tuple(_compile(pattern, where) for pattern in value)


def _compile_lemma_list(value: Any, where: str) -> tuple[re.Pattern[str], ...]:
    # Morphemes are separated by single spaces, so a space in a lemma pattern is literal.
    patterns = _compile_list(value, where)
    return tuple(re.compile(p.pattern.replace(PATTERN_SPACE, " "), re.IGNORECASE) for p in patterns)


def _parse_categories(data: dict[str, Any], source: str) -> dict[str, str]:
    categories = data.get("categories")
    if not isinstance(categories, dict) or not categories:
        raise SafetyConfigError(f"{source}: needs a non-empty 'categories:' mapping")
    roles = {}
    for name, spec in categories.items():
        where = f"{source}: category {name!r}"
        if not isinstance(spec, dict) or set(spec) - CATEGORY_KEYS:
            raise SafetyConfigError(f"{where}: must be a mapping with keys {sorted(CATEGORY_KEYS)}")
        if spec.get("role") not in ROLES:
            raise SafetyConfigError(f"{where}: role must be one of {ROLES}, got {spec.get('role')!r}")
        if not isinstance(spec.get("description"), str) or not spec["description"].strip():
            raise SafetyConfigError(f"{where}: needs a description")
        roles[name] = spec["role"]
    return roles


def _parse_rule(index: int, entry: Any, roles: dict[str, str], source: str) -> Rule:
    where = f"{source}: rule #{index + 1}"
    if not isinstance(entry, dict):
        raise SafetyConfigError(f"{where}: must be a mapping")
    rule_id = entry.get("id")
    if not isinstance(rule_id, str) or not rule_id.strip():
        raise SafetyConfigError(f"{where}: needs an 'id'")
    where = f"{source}: rule {rule_id!r}"
    unknown = set(entry) - RULE_KEYS
    if unknown:
        raise SafetyConfigError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(RULE_KEYS)}")
    category = entry.get("category")
    if category not in roles:
        raise SafetyConfigError(f"{where}: category {category!r} is not declared under 'categories:'")
    description = entry.get("description")
    if not isinstance(description, str) or not description.strip():
        raise SafetyConfigError(f"{where}: needs a 'description'")
    role = roles[category]
    strength = entry.get("strength")
    if role in FLAGGING_ROLES and strength not in STRENGTHS:
        raise SafetyConfigError(f"{where}: 'strength' must be one of {STRENGTHS}, got {strength!r}")
    if role not in FLAGGING_ROLES and "strength" in entry:
        raise SafetyConfigError(f"{where}: only crisis and reply rules take a 'strength'")
    if role in (SPAN_EXCLUSION, CONTEXT_EXCLUSION) and ("requires" in entry or "lemma_patterns" in entry):
        raise SafetyConfigError(f"{where}: exclusion rules take only 'patterns'")
    patterns = _compile_list(entry.get("patterns"), f"{where} patterns")
    lemma_patterns = _compile_lemma_list(entry.get("lemma_patterns"), f"{where} lemma_patterns")
    if not patterns and not lemma_patterns:
        raise SafetyConfigError(f"{where}: needs 'patterns' or 'lemma_patterns'")
    return Rule(
        id=rule_id,
        category=category,
        role=role,
        description=" ".join(description.split()),
        strength=strength if role in FLAGGING_ROLES else None,
        patterns=patterns,
        lemma_patterns=lemma_patterns,
        requires=_compile_list(entry.get("requires"), f"{where} requires"),
    )


def parse_rules(data: Any, source: str = "<memory>") -> SafetyRules:
    """Validates and compiles a parsed rules document.

    Args:
        data: the rules file's content as loaded by YAML.
        source: name used in error messages (normally the file path).

    Raises:
        SafetyConfigError: on any structural problem, naming `source` and the rule.
    """
    if not isinstance(data, dict):
        raise SafetyConfigError(f"{source}: expected a mapping with 'categories' and 'rules'")
    roles = _parse_categories(data, source)
    entries = data.get("rules")
    if not isinstance(entries, list) or not entries:
        raise SafetyConfigError(f"{source}: needs a non-empty 'rules:' list")
    rules = tuple(_parse_rule(index, entry, roles, source) for index, entry in enumerate(entries))
    seen: set[str] = set()
    for rule in rules:
        if rule.id in seen:
            raise SafetyConfigError(f"{source}: rule id {rule.id!r} is used twice")
        seen.add(rule.id)
    if not any(rule.role == CRISIS for rule in rules):
        raise SafetyConfigError(f"{source}: has no crisis rules; a screen without them would flag nothing explicit")
    return SafetyRules(rules=rules, source=source)


def read_yaml(path: Path, what: str) -> Any:
    """A YAML file's content; a missing or unreadable file is a `SafetyConfigError` naming it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SafetyConfigError(f"{what} file not found: {path}") from None
    except OSError as error:
        raise SafetyConfigError(f"cannot read {what} file {path}: {error}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SafetyConfigError(f"{what} file {path} is not valid YAML: {' '.join(str(error).split())}") from None


def load_rules(path: Path) -> SafetyRules:
    """Loads and compiles the rules file.

    Raises:
        SafetyConfigError: the file is missing, not YAML, or breaks the schema.
    """
    return parse_rules(read_yaml(path, "safety rules"), source=str(path))


# === Matching ====================================================================


def _excluded_span(match: re.Match[str]) -> tuple[int, int]:
    if SPAN_GROUP in match.re.groupindex and match.group(SPAN_GROUP) is not None:
        return match.span(SPAN_GROUP)
    return match.span()


def _overlaps(span: tuple[int, int], excluded: list[tuple[int, int]]) -> bool:
    start, end = span
    return any(start < ex_end and ex_start < end for ex_start, ex_end in excluded)


def _first_match(rule: Rule, message: Views, variants: tuple[str, str], excluded: list[list[tuple[int, int]]]) -> str | None:
    if not all(any(req.search(variant) for variant in variants) for req in rule.requires):
        return None
    for variant, spans in zip(variants, excluded, strict=True):
        for pattern in rule.patterns:
            for match in pattern.finditer(variant):
                if match.end() > match.start() and not _overlaps(match.span(), spans):
                    return match.group(0)
    # The morpheme view has no character offsets shared with the text, so span exclusions are
    # checked on the text: a lemma match counts only when no idiom covers the message's verb.
    if rule.lemma_patterns and not any(excluded):
        for pattern in rule.lemma_patterns:
            match = pattern.search(message.lemmas)
            if match and match.end() > match.start():
                return match.group(0)
    return None
