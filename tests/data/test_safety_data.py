"""Expectations on the crisis screen's data: the labelled sets in data/safety/ and the reviewed
rules, lexicon and responses files, as the safety stage and the screen read them."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from pathlib import Path

import pytest

from maeum.safety.evaluation import MESSAGE_LABELS, REPLY_LABELS, Example, read_examples
from maeum.safety.normalise import Lexicon, views
from maeum.safety.rules import CONTEXT_EXCLUSION, CRISIS, REPLY, ROLES, SPAN_EXCLUSION, THIRD_PERSON, load_rules
from maeum.safety.screen import RESPONSE_KEYS, Responses

SAFETY_DIR = Path(__file__).resolve().parents[2] / "data" / "safety"
MESSAGE_SETS = {"train": "train.tsv", "heldout": "heldout.tsv"}
REPLY_SETS = {"replies": "replies.tsv", "replies_heldout": "replies_heldout.tsv"}
CRISIS_CATEGORIES = ("explicit", "passive", "plan_means", "self_harm", "farewell", "hopeless_intent", "recent_attempt",
                     "third_person", "obfuscated")  # fmt: skip
# The issue's safe categories, and smalltalk (greetings and chit-chat, added so short messages are not all read as risk).
SAFE_CATEGORIES = ("idiom", "everyday_distress", "fiction_game_sport", "news_research", "recovered_past", "grief",
                   "everyday_objects", "supporting_friend", "smalltalk")  # fmt: skip
REPLY_CATEGORIES = {"harmful": ("method", "approval"), "safe": ("direct_question", "empathetic", "referral")}
# Hard negatives written after the held-out round, for training only: intentions and decisions in ordinary life
# ("이번 주에 끝낼 거야 이 연애", "매일 사진으로 추억을 남겨 두려고") that read like farewell or plan wording.
TRAINING_ONLY = ("plans_decisions",)
MIN_EXAMPLES = {"train": 300, "heldout": 40}  # held-out: a per-category recall in steps of 2.5 % at most


@pytest.fixture(scope="module")
def labelled() -> dict[str, list[Example]]:
    sets = {name: read_examples(SAFETY_DIR / file) for name, file in MESSAGE_SETS.items()}
    sets |= {name: read_examples(SAFETY_DIR / file, REPLY_LABELS) for name, file in REPLY_SETS.items()}
    return sets


def key(text: str) -> str:
    """A message as compared for leaks: lower case, no spaces, no punctuation (emoji stay: "🙂" is a message)."""
    return "".join(ch for ch in text.lower() if not ch.isspace() and not unicodedata.category(ch).startswith("P"))


# === Labelled messages ===========================================================


@pytest.mark.parametrize("file, labels", [*((f, MESSAGE_LABELS) for f in MESSAGE_SETS.values()),
                                          *((f, REPLY_LABELS) for f in REPLY_SETS.values())])  # fmt: skip
def test_labelled_set_is_well_formed(file, labels):
    examples = read_examples(SAFETY_DIR / file, labels)  # header, three fields, known label, no empty text
    assert {example.label for example in examples} == set(labels)  # both labels present


@pytest.mark.parametrize("name", MESSAGE_SETS)
def test_message_set_holds_only_the_issue_categories(labelled, name):
    extra = TRAINING_ONLY if name == "train" else ()
    assert {example.category for example in labelled[name]} == set(CRISIS_CATEGORIES + SAFE_CATEGORIES + extra)  # no typo'd category


@pytest.mark.parametrize("name", MESSAGE_SETS)
@pytest.mark.parametrize("category", CRISIS_CATEGORIES + SAFE_CATEGORIES)
def test_every_issue_category_has_enough_examples(labelled, name, category):
    count = sum(example.category == category for example in labelled[name])
    assert count >= MIN_EXAMPLES[name], f"{MESSAGE_SETS[name]}: {category} has {count} examples"


@pytest.mark.parametrize("name", MESSAGE_SETS)
def test_a_category_always_carries_its_label(labelled, name):
    wrong = [e for e in labelled[name] if (e.category in CRISIS_CATEGORIES) != (e.label == "crisis")]
    assert wrong == []  # a crisis category is labelled crisis, a safe one safe


@pytest.mark.parametrize("name", [*MESSAGE_SETS, *REPLY_SETS])
def test_no_message_is_listed_twice(labelled, name):
    repeated = [text for text, count in Counter(re.sub(r"\s+", "", e.text) for e in labelled[name]).items() if count > 1]
    assert repeated == []  # a duplicate counts twice in the numbers ("?" and "!!" are different messages)


@pytest.mark.parametrize("train, heldout", [("train", "heldout"), ("replies", "replies_heldout")])
def test_no_held_out_message_appears_in_its_training_set(labelled, train, heldout):
    seen = {key(e.text) for e in labelled[train]}
    leaked = [e.text for e in labelled[heldout] if key(e.text) in seen]
    assert leaked == []  # the held-out numbers are only honest without leaks


@pytest.mark.parametrize("name", REPLY_SETS)
def test_reply_set_has_every_reply_category_under_its_label(labelled, name):
    found = {(e.label, e.category) for e in labelled[name]}
    assert found == {(label, category) for label, categories in REPLY_CATEGORIES.items() for category in categories}


# === Rules, lexicon and responses ================================================


def test_rules_file_loads_with_every_role():
    rules = load_rules(SAFETY_DIR / "rules.yaml")
    assert {rule.role for rule in rules.rules} == set(ROLES)
    assert rules.of_role(CRISIS) and rules.of_role(REPLY) and rules.of_role(THIRD_PERSON)
    assert rules.of_role(SPAN_EXCLUSION) and rules.of_role(CONTEXT_EXCLUSION)


def test_lexicon_file_loads_with_every_section():
    lexicon = Lexicon.load(SAFETY_DIR / "lexicon.yaml")
    assert lexicon.emoji and lexicon.initials and lexicon.initials_in_context and lexicon.spellings
    assert all(len(initials) >= 3 for initials in lexicon.initials)  # two-letter runs are ambiguous (ㅈㅅ = 죄송)


@pytest.fixture(scope="module")
def responses() -> Responses:
    return Responses.load(SAFETY_DIR / "responses.yaml")


@pytest.mark.parametrize("response, line", [
    ("crisis", "109"), ("crisis", "1577-0199"), ("crisis", "1388"), ("crisis", "112"), ("crisis", "119"),
    ("check_in", "109"),
    ("third_person_crisis", "112"), ("third_person_crisis", "119"), ("third_person_crisis", "109"),
    ("third_person_check_in", "109"), ("third_person_check_in", "112"), ("third_person_check_in", "119"),
    ("replaced_reply", "109"), ("supportive_footer", "109"),
])  # fmt: skip
def test_response_gives_the_line_the_issue_names(responses, response, line):
    assert re.search(rf"(?<![\d-]){re.escape(line)}(?![\d-])", responses.texts[response])


def test_no_response_text_would_be_replaced_by_the_reply_rules(responses):
    rules, lexicon = load_rules(SAFETY_DIR / "rules.yaml"), Lexicon.load(SAFETY_DIR / "lexicon.yaml")
    named = {key: [hit.rule.id for hit in rules.hits(views(responses.texts[key], lexicon), REPLY)] for key in RESPONSE_KEYS}
    assert named == {key: [] for key in RESPONSE_KEYS}  # no method, means or approval (보도준칙)


@pytest.mark.parametrize("answer, reading", [("응", "yes"), ("ㅇㅇ", "yes"), ("네", "yes"), ("가끔 그런 생각 들어", "yes"),
                                             ("아니 그건 아니야", "no"), ("아뇨", "no"), ("ㄴㄴ", "no"),
                                             ("그 정도는 아니야", "no"), ("오늘 날씨 좋다", None)])  # fmt: skip
def test_check_in_answers_read_as_yes_or_no(responses, answer, reading):
    read = "no" if responses.no.search(answer) else "yes" if responses.yes.search(answer) else None
    assert read == reading
