"""Graded decisions: what a conversation turn gets, from the rules, the classifier and the conversation.

`Screen.assess(text, history)` returns an `Assessment`:

- `crisis`: the fixed referral response (109, 1577-0199, 1388, 112/119); the model is not called.
- `check_in`: a warm, direct question about suicidal thoughts or self-harm with the 109 line; the
  model is not called for that turn, and the user's answer decides the next: a "yes" is a crisis,
  a "no" lets the model answer.
- `none`: the model answers; its reply is screened (`Screen.screen_reply`) and replaced if it names a
  method, means, place or dose, or approves of self-harm (자살예방 보도준칙 4.0).

A message about someone else in danger gets the third-person texts (112/119 for them now, how to
stay with them) instead of texts about the user's own risk.

Conversation context counts. Each turn is also read together with the user's earlier turns since
the last safety response (`safety.context_turns` of them), so means named in one turn and a time
or a goodbye in the next raise the level together. Once a crisis response has been shown, the
conversation stays screened until it is reset: every signal that would ask a question is a
crisis, and every model reply carries the 109 line. The state is read from the history itself
(the texts it shows are the responses file's), so an API that resends the conversation with each
request gets the same decisions as a chat session that keeps it.

How the parts combine (levels only ever go up with more evidence):

    risk >= crisis threshold -> crisis;  risk >= check_in threshold -> check_in
    strong rule  -> crisis already halfway between the check_in and crisis thresholds (explicit
                    first-person words); check_in from the check_in threshold
    any rule     -> check_in already at half the check_in threshold; below that the classifier reads a
                    past, fictional or reported context ("예전엔 죽고 싶었는데 지금은 괜찮아") and nothing fires
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from maeum.safety import rules as rules_module
from maeum.safety.classifier import THIRD_PERSON, Thresholds, TrainedScreen, feature_frame, positive_scores
from maeum.safety.normalise import Lexicon, LexiconError, Views, views
from maeum.safety.rules import CRISIS, REPLY, STRONG, SafetyConfigError, SafetyRules

Level = Literal["crisis", "check_in", "none"]
LEVELS: tuple[Level, ...] = ("none", "check_in", "crisis")
USER, MODEL = "user", "model"  # history roles, as in maeum.dialogue
RESPONSE_KEYS = ("crisis", "check_in", "third_person_crisis", "third_person_check_in", "replaced_reply",
                 "supportive_footer")  # fmt: skip
ANSWER_KEYS = ("affirmative", "negative")
# A rule that matches halves the classifier score needed for check_in. Not less: explicit words in
# a past, fictional or reported context ("예전엔 죽고 싶었는데 지금은 괜찮아") score low with the classifier.
RULE_DISCOUNT = 0.5

@dataclass(frozen=True)
class Signal:
    """One piece of evidence: a rule that matched, or a classifier score."""

    source: str  # "rule", "classifier", "context", "answer", "session"
    name: str  # rule id, model name, ...
    value: float | str

    def describe(self) -> str:
        return f"{self.source} {self.name}: {self.value:.3f}" if isinstance(self.value, float) else f"{self.source} {self.name}: {self.value}"


@dataclass(frozen=True)
class Assessment:
    """The screen's decision on one user turn.

    Attributes:
        level: "crisis", "check_in" or "none".
        score: the classifier's risk for this turn (read with its context when that was higher), 0..1.
        about: "self", or "other" when the message is about someone else's safety.
        signals: what fired: rule ids, classifier probabilities, context, the answer to a check-in.
        reason: one sentence a reviewer can read.
        category: the most likely crisis category (classifier), for reviewers.
        screened_session: a crisis was shown earlier in this conversation.
    """

    level: Level
    score: float
    about: Literal["self", "other"]
    signals: tuple[Signal, ...]
    reason: str
    category: str | None = None
    screened_session: bool = False

    @property
    def needs_response(self) -> bool:
        """True when the screen answers this turn instead of the model."""
        return self.level != "none"


@dataclass(frozen=True)
class ReplyCheck:
    """The screen's decision on one model reply."""

    harmful: bool
    score: float
    reason: str
    rule_id: str | None = None


@dataclass(frozen=True)
class Responses:
    """The reviewed texts (data/safety/responses.yaml) and the check-in answer patterns."""

    texts: dict[str, str]
    yes: re.Pattern[str]
    no: re.Pattern[str]

    @classmethod
    def load(cls, path: Path) -> Responses:
        """Reads and validates the responses file.

        Raises:
            SafetyConfigError: a text is missing or empty, or an answer pattern is invalid.
        """
        data = rules_module.read_yaml(path, "safety responses")
        if not isinstance(data, dict):
            raise SafetyConfigError(f"{path}: expected a mapping of response texts")
        texts = {}
        for key in RESPONSE_KEYS:
            text = data.get(key)
            if not isinstance(text, str) or not text.strip():
                raise SafetyConfigError(f"{path}: response {key!r} is missing or empty")
            texts[key] = text.strip()
        if "109" not in texts["crisis"] or "109" not in texts["check_in"]:
            raise SafetyConfigError(f"{path}: the crisis and check_in texts must give the 109 line")
        answers = data.get("answers")
        if not isinstance(answers, dict) or set(answers) != set(ANSWER_KEYS):
            raise SafetyConfigError(f"{path}: 'answers' needs exactly {ANSWER_KEYS}")
        try:
            compiled = {key: re.compile(answers[key]) for key in ANSWER_KEYS}
        except (re.error, TypeError) as error:
            raise SafetyConfigError(f"{path}: invalid answer pattern: {error}") from None
        return cls(texts, compiled["affirmative"], compiled["negative"])

    def for_assessment(self, assessment: Assessment) -> str:
        """The text shown for a crisis or check_in turn."""
        prefix = "third_person_" if assessment.about == "other" else ""
        return self.texts[f"{prefix}{assessment.level}"]

    def is_screen_response(self, text: str, *keys: str) -> bool:
        return any(text.strip() == self.texts[key] for key in keys)


CRISIS_RESPONSES = ("crisis", "third_person_crisis")
SCREEN_RESPONSES = ("crisis", "check_in", "third_person_crisis", "third_person_check_in", "replaced_reply")


@dataclass
class Screen:
    """Rules, lexicon, classifier and responses: everything that screens, loaded from one `safety:` config.

    Load it with `Screen.load(params.safety)`; a missing or broken file raises `SafetyConfigError`
    before the first turn, never a silent screen that lets everything through.
    """

    rules: SafetyRules
    lexicon: Lexicon
    classifier: TrainedScreen
    responses: Responses
    context_turns: int = 3
    _cache: dict[str, Views] = field(default_factory=dict, repr=False)

    @classmethod
    def from_files(cls, rules_file: Path, lexicon_file: Path, model_dir: Path, responses_file: Path,
                   context_turns: int) -> Screen:  # fmt: skip
        """Loads every part; also warms the morphological analyser so the first turn is fast.

        Raises:
            SafetyConfigError: any file missing or malformed, named in the message.
        """
        from maeum.safety.normalise import analyser

        try:
            lexicon = Lexicon.load(lexicon_file)
        except LexiconError as error:
            raise SafetyConfigError(str(error)) from None
        screen = cls(rules_module.load_rules(rules_file), lexicon, TrainedScreen.load(model_dir),
                     Responses.load(responses_file), context_turns)  # fmt: skip
        analyser()
        return screen

    @classmethod
    def load(cls, safety_params) -> Screen:
        """The screen of a `safety:` section of params.yaml (`maeum.config.SafetyParams`)."""
        return cls.from_files(safety_params.rules_file, safety_params.lexicon_file, safety_params.model_dir,
                              safety_params.responses_file, safety_params.context_turns)  # fmt: skip

    @property
    def thresholds(self) -> Thresholds:
        return self.classifier.thresholds

    # === Reading one text ===

    def views(self, text: str) -> Views:
        if text not in self._cache:
            if len(self._cache) > 1024:
                self._cache.clear()
            self._cache[text] = views(text, self.lexicon)
        return self._cache[text]

    def risk(self, texts: Sequence[str]) -> list[float]:
        """The classifier's crisis probability of each text."""
        return self.classifier.risk_scores(feature_frame([self.views(text) for text in texts])).tolist()

    def kind(self, text: str) -> tuple[str, float]:
        """The most likely crisis category and its probability (over crisis categories only)."""
        probabilities = self.classifier.kinds(feature_frame([self.views(text)]))[0]
        best = int(probabilities.argmax())
        return str(self.classifier.kind.classes_[best]), float(probabilities[best])

    def _level(self, risk: float, hits: list[rules_module.RuleHit]) -> Level:
        thresholds = self.thresholds
        # Explicit words at a middling score are often a recovered past ("예전엔 죽고 싶었는데"): asked, not referred.
        strong_crisis = (thresholds.check_in + thresholds.crisis) / 2
        if any(hit.rule.strength == STRONG for hit in hits) and risk >= strong_crisis:
            return "crisis"
        if risk >= thresholds.crisis:
            return "crisis"
        if risk >= thresholds.check_in or (hits and risk >= thresholds.check_in * RULE_DISCOUNT):
            return "check_in"
        return "none"

    # === A user turn ===

    def assess(self, text: str, history: Sequence[tuple[str, str]] = ()) -> Assessment:
        """Decides what one user turn gets (see the module docstring).

        Args:
            text: the user's message.
            history: earlier (role, text) turns of this conversation, oldest first; role "user" or
                "model" ("assistant" is read as "model"); model turns are what the user was shown.

        Returns:
            The assessment; `Responses.for_assessment` gives the text for crisis and check_in.
        """
        history = [(MODEL if role == "assistant" else role, content) for role, content in history]
        screened = any(role == MODEL and self.responses.is_screen_response(content, *CRISIS_RESPONSES)
                       for role, content in history)  # fmt: skip
        answering = bool(history) and history[-1][0] == MODEL and self.responses.is_screen_response(
            history[-1][1], "check_in", "third_person_check_in")
        context = self._context(history)

        own_views = self.views(text)
        hits = self.rules.hits(own_views, CRISIS)
        texts = [text] + ([" ".join([*context, text])] if context else [])
        scores = self.risk(texts)
        own_risk = scores[0]
        signals = [Signal("rule", hit.rule.id, hit.matched) for hit in hits]
        signals.append(Signal("classifier", "risk", own_risk))
        level = self._level(own_risk, hits)
        reasons = [self._describe(level, own_risk, hits, "this message")]

        score = own_risk
        if context:
            joined = texts[1]
            context_risk = scores[1]
            context_hits = self.rules.hits(self.views(joined), CRISIS)
            # A rule that only matches across the turns is weighed with the stronger of the two scores: joining
            # ordinary words to this turn dilutes the classifier's evidence, not the rule's.
            context_level = self._level(max(own_risk, context_risk), context_hits)
            signals.append(Signal("context", f"risk over {len(context) + 1} user turns", context_risk))
            if LEVELS.index(context_level) > LEVELS.index(level):
                level = context_level
                reasons.append(self._describe(context_level, context_risk, context_hits, "with the earlier turns"))
            score = max(score, context_risk)

        if answering:
            answer = self._answer(text)
            if answer:
                signals.append(Signal("answer", "check_in", answer))
            if answer == "yes":
                level = "crisis"
                reasons.append("answered yes to the direct question about suicidal thoughts")
            elif answer == "no" and not hits and own_risk < self.thresholds.crisis:
                # The person answered the direct question: believe them, unless this very message is explicit.
                level = "none"
                reasons.append("answered no to the direct question, and this message alone is below crisis")

        if screened and level == "check_in":
            level = "crisis"
            reasons.append("a crisis was shown earlier in this conversation, so any signal is a crisis")
        if screened:
            signals.append(Signal("session", "screened", "after a crisis response"))

        about = "self"
        category = None
        if level != "none":
            category, probability = self.kind(text if not context or level == self._level(own_risk, hits) else texts[1])
            signals.append(Signal("classifier", f"kind {category}", probability))
            third = self.rules.hits(own_views, rules_module.THIRD_PERSON)
            signals += [Signal("rule", hit.rule.id, hit.matched) for hit in third]
            if category == THIRD_PERSON or third:
                about = "other"
        return Assessment(level, score, about, tuple(signals), "; ".join(r for r in reasons if r), category, screened)

    def _context(self, history: Sequence[tuple[str, str]]) -> list[str]:
        """The user's turns since the last response the screen gave, at most `context_turns`."""
        turns: list[str] = []
        for role, content in reversed(history):
            if role == MODEL and self.responses.is_screen_response(content, *SCREEN_RESPONSES):
                break
            if role == USER:
                turns.append(content)
        return list(reversed(turns))[-self.context_turns :] if self.context_turns > 0 else []

    def _answer(self, text: str) -> str | None:
        normalised = self.views(text).text
        if self.responses.no.search(normalised):
            return "no"
        if self.responses.yes.search(normalised):
            return "yes"
        return None

    def _describe(self, level: Level, risk: float, hits: list[rules_module.RuleHit], where: str) -> str:
        thresholds = self.thresholds
        if hits:
            rules_part = ", ".join(hit.describe() for hit in hits[:3])
            return f"{where}: {level}: {rules_part}; classifier risk {risk:.2f}"
        if level == "none":
            return f"{where}: no rule matched and classifier risk {risk:.2f} is below check_in {thresholds.check_in:.2f}"
        bound = thresholds.crisis if level == "crisis" else thresholds.check_in
        return f"{where}: {level}: classifier risk {risk:.2f} >= {level} threshold {bound:.2f}"

    # === A model reply ===

    def quiet(self, assessment: Assessment) -> bool:
        """No risk signal at all in this turn and its conversation: no rule, a low score, no crisis shown before."""
        return (assessment.level == "none" and not assessment.screened_session
                and assessment.score < self.thresholds.check_in * RULE_DISCOUNT
                and not any(signal.source == "rule" for signal in assessment.signals))  # fmt: skip

    def screen_reply(self, reply: str, quiet: bool = False) -> ReplyCheck:
        """Whether a model reply names a method, means, place or dose, or approves of self-harm.

        Empathetic replies that name the feeling, ask directly or point to 109 pass.

        Args:
            quiet: the conversation shows no risk signal (`Screen.quiet`). Then the classifier needs the
                higher `reply_ordinary` score: approval of self-harm and warm approval of an ordinary plan
                ("그렇게 해 보면 분명 달라질 거예요") share their words, and only the conversation tells them apart.
        """
        reply_views = self.views(reply)
        if not reply_views.compact:  # no words (the model ended its turn at once): the classifier's prior is not a verdict
            return ReplyCheck(False, 0.0, "empty reply")
        hits = self.rules.hits(reply_views, REPLY)
        score = float(positive_scores(self.classifier.reply, feature_frame([reply_views]), "harmful")[0])
        strong = [hit for hit in hits if hit.rule.strength == STRONG]
        if strong:
            return ReplyCheck(True, score, strong[0].describe(), strong[0].rule.id)
        threshold = self.thresholds.reply_ordinary if quiet else self.thresholds.reply
        if score >= threshold:
            why = f"reply classifier {score:.2f} >= {threshold:.2f}"
            return ReplyCheck(True, score, why + (f"; {hits[0].describe()}" if hits else ""), hits[0].rule.id if hits else None)
        return ReplyCheck(False, score, f"reply classifier {score:.2f}" + (f"; weak {hits[0].rule.id}" if hits else ""))

    def shown_reply(self, reply: str, history: Sequence[tuple[str, str]], assessment: Assessment | None = None
                    ) -> tuple[str, ReplyCheck]:  # fmt: skip
        """What the user sees for a model reply: the reply, the replacement, plus the 109 line in a screened session.

        Args:
            assessment: the screen's decision on the user's turn the reply answers; None reads the
                conversation as one with a risk signal (the stricter reply threshold).
        """
        check = self.screen_reply(reply, quiet=assessment is not None and self.quiet(assessment))
        shown = self.responses.texts["replaced_reply"] if check.harmful else reply
        screened = any(role in (MODEL, "assistant") and self.responses.is_screen_response(content, *CRISIS_RESPONSES)
                       for role, content in history)  # fmt: skip
        if screened and not check.harmful:
            shown = f"{shown}\n\n{self.responses.texts['supportive_footer']}".strip()
        return shown, check
