"""The crisis screen's parts without a trained classifier: normalisation, the rules, lexicon and
responses files, labelled sets and their scores, the threshold helpers, and how `Screen.assess`
combines rules, scores, answers and context (with fixed scores standing in for the classifier)."""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from maeum.safety import Assessment, SafetyConfigError, Screen, Signal
from maeum.safety.classifier import (
    CARD_FILE,
    MODEL_FILE,
    Thresholds,
    TrainedScreen,
    choose_thresholds,
    rate_threshold,
    recall_threshold,
)
from maeum.safety.evaluation import (
    REPLY_LABELS,
    Example,
    flat_metrics,
    format_table,
    read_examples,
    score_levels,
    score_replies,
)
from maeum.safety.normalise import (
    Lexicon,
    LexiconError,
    Views,
    compose_jamo,
    fold_unicode,
    initials_of,
    views,
)
from maeum.safety.rules import CRISIS, REPLY, STRONG, THIRD_PERSON, load_rules
from maeum.safety.screen import Responses

REPO = Path(__file__).resolve().parents[2]
SAFETY_DIR = REPO / "data" / "safety"


@pytest.fixture(scope="module")
def lexicon() -> Lexicon:
    return Lexicon.load(SAFETY_DIR / "lexicon.yaml")


def text_of(message: str, lexicon: Lexicon) -> str:
    return views(message, lexicon).text


# === Normalisation ===============================================================


@pytest.mark.parametrize("typed, phrase", [("ㅈㄱㅅㄷ", "죽고싶다"), ("ㅅㄹㅈㄱㅅㄷ", "사라지고싶다"), ("ㅈㅅㅎㄱㅅㅇ", "자살하고싶어")])
def test_a_run_of_initials_is_spelled_out_as_its_phrase(lexicon, typed, phrase):
    assert text_of(typed, lexicon) == phrase
    assert text_of(f"요즘 {typed} ㅠㅠ", lexicon) == f"요즘 {phrase} ㅠㅠ"


@pytest.mark.parametrize("typed", ["ㄱㅅ", "ㅇㅋ", "ㅋㅋ"])
def test_initials_that_spell_no_listed_phrase_stay(lexicon, typed):
    assert text_of(typed, lexicon) == typed


def test_short_initials_are_spelled_out_only_before_their_context(lexicon):
    assert text_of("ㅈㅅ하고 싶다", lexicon) == "자살하고 싶다"
    assert text_of("ㅈㅎ 충동", lexicon) == "자해 충동"
    assert text_of("ㅈㅅ해요", lexicon) == "ㅈㅅ해요"  # 죄송해요
    assert text_of("늦어서 ㅈㅅ", lexicon) == "늦어서 ㅈㅅ"


@pytest.mark.parametrize("typed, joined", [("죽.고.싶.다", "죽고싶다"), ("자*살", "자살"), ("죽/고/싶/어", "죽고싶어"),
                                           ("죽 고 싶 어", "죽고싶어")])  # fmt: skip
def test_syllables_split_by_symbols_or_spaced_out_are_joined(lexicon, typed, joined):
    assert text_of(typed, lexicon) == joined


@pytest.mark.parametrize("sentence", ["좀 더 줘", "나 갈 게", "그 책 줘"])
def test_short_runs_of_one_syllable_words_stay_apart(lexicon, sentence):
    assert text_of(sentence, lexicon) == sentence


def test_the_compact_view_reads_two_spaced_syllables_as_one_word(lexicon):
    message = views("자 살", lexicon)
    assert message.text == "자 살" and message.compact == "자살"


@pytest.mark.parametrize("typed, collapsed", [("죽고싶어어어어", "죽고싶어"), ("ㅠㅠㅠㅠㅠ", "ㅠㅠ"), ("제발!!!!!", "제발!!"),
                                              ("ㅋㅋㅋㅋ", "ㅋㅋ")])  # fmt: skip
def test_characters_repeated_three_times_or_more_collapse(lexicon, typed, collapsed):
    assert text_of(typed, lexicon) == collapsed


@pytest.mark.parametrize("typed", ["자\u200b살", "자\u2060살", "\ufeff자살", "자\u200d살"])
def test_invisible_characters_are_removed(lexicon, typed):
    assert text_of(typed, lexicon) == "자살"


def test_emoji_for_a_means_become_the_word_and_other_emoji_go(lexicon):
    assert text_of("💊 모아둠", lexicon) == "약 모아둠"
    assert text_of("🔪", lexicon) == "칼"
    assert text_of("😀 좋아", lexicon) == "좋아"


def test_compatibility_jamo_are_kept_where_nfkc_would_change_them(lexicon):
    assert unicodedata.normalize("NFKC", "ㅠ") != "ㅠ"  # why fold_unicode exempts them
    assert fold_unicode("ㅠㅠ ㅈㄱㅅㄷ") == "ㅠㅠ ㅈㄱㅅㄷ"
    assert text_of("ㅠㅠ", lexicon) == "ㅠㅠ" and text_of("ㅠ ㅠ", lexicon) == "ㅠ ㅠ"  # not composed into syllables
    assert fold_unicode("ＡＢ１") == "AB1"  # other compatibility forms are folded


def test_a_word_typed_on_the_english_layout_is_read_beside_the_original(lexicon):
    assert text_of("wnrrhtlvek", lexicon) == "wnrrhtlvek 죽고싶다"
    assert text_of("ok gg", lexicon) == "ok gg"  # too short to be read


@pytest.mark.parametrize("typed, composed", [("ㅈ ㅏ ㅅ ㅏ ㄹ", "자살"), ("ㅈ.ㅜ.ㄱ.ㄱ.ㅗ", "죽고")])
def test_spaced_out_jamo_are_composed_into_syllables(lexicon, typed, composed):
    assert text_of(typed, lexicon) == composed


def test_compose_jamo_builds_compound_vowels_and_finals_and_refuses_leftovers():
    assert compose_jamo("ㅈㅜㄱㄱㅗ") == "죽고"
    assert compose_jamo("ㄱㅗㅏ") == "과" and compose_jamo("ㄷㅏㄹㄱ") == "닭"
    assert compose_jamo("ㅈㅈ") is None and compose_jamo("ㅏ") is None
    assert initials_of("죽고 싶다!") == "ㅈㄱㅅㄷ"


@pytest.mark.parametrize("typed, standard", [("주꼬시퍼", "죽고싶어"), ("쥭고싶다", "죽고싶다"), ("뒤지고싶다", "죽고싶다"),
                                             ("죽고 십다", "죽고싶다"), ("자쌀", "자살"), ("자1살", "자살")])  # fmt: skip
def test_known_misspellings_are_spelled_out(lexicon, typed, standard):
    assert text_of(typed, lexicon) == standard


def test_text_is_lower_cased_with_whitespace_collapsed(lexicon):
    assert text_of("  OK  고마워\n\n정말 ", lexicon) == "ok 고마워 정말"


def test_the_morpheme_view_gives_dictionary_forms_shared_across_conjugations(lexicon):
    decided = views("끝내기로 했어요", lexicon).lemmas.split()
    assert decided[:4] == ["끝내다", "기", "로", "하다"]
    assert "끝내다" in views("끝낼 거야", lexicon).lemmas.split()
    assert views("", lexicon).lemmas == ""


# === Lexicon file ================================================================


def lexicon_doc() -> dict:
    return {"emoji": {"💊": "약"}, "phrases": ["죽고싶다"],
            "initials_in_context": [{"initials": "ㅈㅅ", "phrase": "자살", "before": "하고 ?싶"}],
            "spellings": {"쥭": "죽"}}  # fmt: skip


def test_a_valid_lexicon_parses_with_initials_computed():
    parsed = Lexicon.parse(lexicon_doc(), "lex.yaml")
    assert parsed.initials == {"ㅈㄱㅅㄷ": "죽고싶다"} and parsed.initials_in_context[0].phrase == "자살"


@pytest.mark.parametrize("break_it, named", [
    (lambda d: d.pop("spellings"), "missing section 'spellings'"),
    (lambda d: d.update(emoji={"💊": 3}), "emoji"),
    (lambda d: d.update(phrases=["abc"]), "phrases"),
    (lambda d: d["initials_in_context"][0].update(extra="x"), r"initials_in_context\[0\]"),
    (lambda d: d["initials_in_context"][0].update(before="(하고"), r"initials_in_context\[0\].*invalid regular expression"),
    (lambda d: d.update(spellings={"([": "x"}), "spellings.*invalid regular expression"),
])  # fmt: skip
def test_a_malformed_lexicon_entry_is_an_error_naming_the_file_and_entry(break_it, named):
    doc = lexicon_doc()
    break_it(doc)
    with pytest.raises(LexiconError, match=rf"^lex\.yaml: .*{named}"):
        Lexicon.parse(doc, "lex.yaml")


def test_a_lexicon_that_is_not_a_mapping_is_an_error():
    with pytest.raises(LexiconError, match="lex.yaml: expected a mapping"):
        Lexicon.parse(["죽고싶다"], "lex.yaml")


def test_a_missing_or_unparsable_lexicon_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(LexiconError, match=f"not found: {re.escape(str(tmp_path / 'none.yaml'))}"):
        Lexicon.load(tmp_path / "none.yaml")
    broken = tmp_path / "lexicon.yaml"
    broken.write_text("emoji: [\n", encoding="utf-8")
    with pytest.raises(LexiconError, match=f"{re.escape(str(broken))} cannot be read as YAML") as caught:
        Lexicon.load(broken)
    assert "\n" not in str(caught.value)  # the CLI prints it as one line


# === Rules file ==================================================================


def rules_doc() -> dict:
    return {
        "categories": {
            "intent": {"role": "crisis", "description": "wants to die"},
            "idiom": {"role": "span_exclusion", "description": "everyday hyperbole"},
            "story": {"role": "context_exclusion", "description": "games and dramas"},
            "someone_else": {"role": "third_person", "description": "another person's safety"},
            "reply_harm": {"role": "reply", "description": "a reply that must not be shown"},
        },
        "rules": [
            {"id": "intent.want_to_die", "category": "intent", "strength": "strong", "description": "죽고 싶다",
             "patterns": ["죽고 싶"]},
            {"id": "intent.die_weak", "category": "intent", "strength": "weak", "description": "죽겠다", "patterns": ["죽겠"]},
            {"id": "intent.note", "category": "intent", "strength": "weak", "description": "유서", "patterns": ["유서"]},
            {"id": "intent.date", "category": "intent", "strength": "strong", "description": "a date, with an ending",
             "patterns": ["날짜(를)? 정했"], "requires": ["(끝내|죽)"]},
            {"id": "intent.decided", "category": "intent", "strength": "weak", "description": "decided to end it",
             "lemma_patterns": ["끝내다 기 로 하다"]},
            {"id": "idiom.hungry", "category": "idiom", "description": "배고파 죽겠다", "patterns": ["배고파 (?P<span>죽겠)"]},
            {"id": "story.screen", "category": "story", "description": "games and dramas", "patterns": ["(게임|드라마)"]},
            {"id": "other.friend", "category": "someone_else", "description": "a friend's note",
             "patterns": ["친구가 .{0,20}유서"]},
            {"id": "reply.lethal_dose", "category": "reply_harm", "strength": "strong", "description": "a lethal dose",
             "patterns": ["치사량"]},
        ],
    }  # fmt: skip


def write_yaml(path: Path, doc) -> Path:
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def rule(doc: dict, rule_id: str) -> dict:
    return next(entry for entry in doc["rules"] if entry["id"] == rule_id)


def test_a_valid_rules_file_loads_every_rule_with_its_role(tmp_path):
    rules = load_rules(write_yaml(tmp_path / "rules.yaml", rules_doc()))
    assert len(rules.rules) == 9 and rules.source == str(tmp_path / "rules.yaml")
    assert [r.id for r in rules.of_role(CRISIS)] == ["intent.want_to_die", "intent.die_weak", "intent.note", "intent.date",
                                                     "intent.decided"]  # fmt: skip
    strengths = {r.id: r.strength for r in rules.rules}
    assert strengths["intent.want_to_die"] == STRONG and strengths["idiom.hungry"] is None
    assert rules.without_category("intent").of_role(CRISIS) == ()


@pytest.mark.parametrize("break_it, named", [
    (lambda d: rule(d, "intent.want_to_die").update(strenght="strong"), r"rule 'intent\.want_to_die': unknown keys \['strenght'\]"),
    (lambda d: rule(d, "intent.note").update(category="intnet"), r"rule 'intent\.note': category 'intnet' is not declared"),
    (lambda d: rule(d, "intent.die_weak").pop("strength"), r"rule 'intent\.die_weak': 'strength' must be one of"),
    (lambda d: rule(d, "intent.want_to_die").update(patterns=["죽고 (싶"]), r"rule 'intent\.want_to_die' patterns: invalid regular expression"),
    (lambda d: rule(d, "intent.date").update(requires=["(끝내"]), r"rule 'intent\.date' requires: invalid regular expression"),
    (lambda d: rule(d, "intent.die_weak").update(id="intent.want_to_die"), r"rule id 'intent\.want_to_die' is used twice"),
    (lambda d: d.update(rules=[e for e in d["rules"] if e["category"] != "intent"]), "has no crisis rules"),
    (lambda d: rule(d, "intent.note").pop("description"), r"rule 'intent\.note': needs a 'description'"),
    (lambda d: rule(d, "intent.note").pop("patterns"), r"rule 'intent\.note': needs 'patterns' or 'lemma_patterns'"),
    (lambda d: rule(d, "intent.note").update(patterns=[""]), r"rule 'intent\.note' patterns: every pattern must be a non-empty"),
    (lambda d: rule(d, "idiom.hungry").update(strength="weak"), r"rule 'idiom\.hungry': only crisis and reply rules take"),
    (lambda d: rule(d, "story.screen").update(requires=["x"]), r"rule 'story\.screen': exclusion rules take only 'patterns'"),
    (lambda d: d["rules"][0].pop("id"), "rule #1: needs an 'id'"),
    (lambda d: d["categories"]["intent"].update(role="panic"), "category 'intent': role must be one of"),
    (lambda d: d.pop("categories"), "needs a non-empty 'categories:' mapping"),
])  # fmt: skip
def test_a_malformed_rule_is_an_error_naming_the_file_and_the_rule(tmp_path, break_it, named):
    assert_broken_file_is_named(tmp_path / "rules.yaml", rules_doc(), break_it, load_rules, named)


def assert_broken_file_is_named(path: Path, doc: dict, break_it, load, named: str) -> None:
    """Writes `doc` broken by `break_it` to `path`; loading it must fail with one message naming the file and `named`."""
    break_it(doc)
    write_yaml(path, doc)
    with pytest.raises(SafetyConfigError, match=rf"^{re.escape(str(path))}: .*{named}"):
        load(path)


@pytest.mark.parametrize("load, says", [(load_rules, "safety rules file not found"), (read_examples, "labelled set not found"),
                                        (Responses.load, "safety responses file not found")])  # fmt: skip
def test_a_missing_file_is_an_error_naming_it(tmp_path, load, says):
    with pytest.raises(SafetyConfigError, match=f"{says}: {re.escape(str(tmp_path / 'none'))}"):
        load(tmp_path / "none")


def test_an_unparsable_rules_file_is_one_line_naming_it(tmp_path):
    broken = tmp_path / "rules.yaml"
    broken.write_text("rules: [\n  - id: x\n", encoding="utf-8")
    with pytest.raises(SafetyConfigError, match=f"safety rules file {re.escape(str(broken))} is not valid YAML") as caught:
        load_rules(broken)
    assert "\n" not in str(caught.value)  # the CLI prints it as one line


# === Rule matching on Views ======================================================


@pytest.fixture(scope="module")
def rules(tmp_path_factory):
    return load_rules(write_yaml(tmp_path_factory.mktemp("rules") / "rules.yaml", rules_doc()))


def as_views(text: str, lemmas: str = "") -> Views:
    return Views(text=text, compact=re.sub(r"[^0-9a-z가-힣ㄱ-ㅣ]+", "", text), lemmas=lemmas)


def hit_ids(rules, text: str, role: str = CRISIS, lemmas: str = "") -> list[str]:
    return [hit.rule.id for hit in rules.hits(as_views(text, lemmas), role)]


def test_a_rule_hit_names_the_words_it_matched(rules):
    (hit,) = rules.hits(as_views("요즘 너무 죽고 싶어"), CRISIS)
    assert (hit.rule.id, hit.matched) == ("intent.want_to_die", "죽고 싶")
    assert "intent.want_to_die" in hit.describe() and "strong" in hit.describe()


@pytest.mark.parametrize("text", ["죽고싶어", "죽고   싶어", "죽고\n싶어"])
def test_a_space_in_a_pattern_matches_any_whitespace_or_none(rules, text):
    assert hit_ids(rules, text) == ["intent.want_to_die"]


def test_the_compact_view_matches_words_split_by_symbols(rules):
    assert hit_ids(rules, "죽-고 싶어") == ["intent.want_to_die"]


def test_a_span_exclusion_cancels_only_the_words_it_covers(rules):
    assert hit_ids(rules, "배고파 죽겠어") == []
    assert hit_ids(rules, "배고파 죽겠어 근데 진짜 죽고 싶어") == ["intent.want_to_die"]
    assert hit_ids(rules, "진짜 죽겠어") == ["intent.die_weak"]


def test_a_context_exclusion_cancels_weak_rules_only(rules):
    assert hit_ids(rules, "드라마에서 유서 쓰는 장면 나왔어") == []
    assert hit_ids(rules, "게임도 재미없고 유서 써야 하나 진짜 죽고 싶어") == ["intent.want_to_die"]


def test_strong_hits_come_before_weak_ones(rules):
    assert hit_ids(rules, "유서 쓰고 죽고 싶어") == ["intent.want_to_die", "intent.note"]


def test_a_rule_with_requires_matches_only_when_every_requirement_does(rules):
    assert hit_ids(rules, "이사 날짜를 정했어") == []
    assert hit_ids(rules, "다 끝내는 날짜를 정했어") == ["intent.date"]


def test_a_lemma_pattern_matches_the_morpheme_view_unless_an_idiom_is_in_the_message(rules):
    lemmas = "끝내다 기 로 하다 었 어요"
    assert hit_ids(rules, "끝내기로 했어요", lemmas=lemmas) == ["intent.decided"]
    assert hit_ids(rules, "배고파 죽겠어 끝내기로 했어요", lemmas="배고프다 어 죽다 겠 어 " + lemmas) == []


def test_rules_of_other_roles_are_asked_for_by_role(rules):
    assert hit_ids(rules, "친구가 유서를 남겼어", THIRD_PERSON) == ["other.friend"]
    assert hit_ids(rules, "치사량은 이 정도예요", REPLY) == ["reply.lethal_dose"]
    assert hit_ids(rules, "치사량은 이 정도예요", CRISIS) == []


# === Responses file ==============================================================


def responses_doc() -> dict:
    return yaml.safe_load((SAFETY_DIR / "responses.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("break_it, named", [
    (lambda d: d.pop("crisis"), "response 'crisis' is missing or empty"),
    (lambda d: d.update(third_person_crisis="  "), "response 'third_person_crisis' is missing or empty"),
    (lambda d: d.update(crisis=d["crisis"].replace("109", "1393")), "must give the 109 line"),
    (lambda d: d.update(check_in=d["check_in"].replace("109", "1393")), "must give the 109 line"),
    (lambda d: d["answers"].update(affirmative="^(응"), "invalid answer pattern"),
    (lambda d: d["answers"].pop("negative"), "'answers' needs exactly"),
])  # fmt: skip
def test_a_malformed_responses_file_is_an_error_naming_it(tmp_path, break_it, named):
    assert_broken_file_is_named(tmp_path / "responses.yaml", responses_doc(), break_it, Responses.load, named)


def test_someone_else_in_danger_gets_the_third_person_texts():
    responses = Responses.load(SAFETY_DIR / "responses.yaml")

    def shown(level, about):
        return responses.for_assessment(Assessment(level, 0.9, about, (), "test"))

    assert shown("crisis", "self") == responses.texts["crisis"]
    assert shown("crisis", "other") == responses.texts["third_person_crisis"]
    assert shown("check_in", "other") == responses.texts["third_person_check_in"]
    assert responses.is_screen_response(f"  {responses.texts['crisis']}\n", "crisis")


# === A broken classifier folder ==================================================


def test_a_missing_classifier_folder_says_to_run_the_safety_stage(tmp_path):
    missing = rf"safety classifier missing in {re.escape(str(tmp_path))}.*dvc repro safety"
    with pytest.raises(SafetyConfigError, match=missing):
        TrainedScreen.load(tmp_path)


def write_card(folder: Path, card) -> None:
    folder.mkdir(exist_ok=True)
    (folder / CARD_FILE).write_text(card if isinstance(card, str) else json.dumps(card), encoding="utf-8")
    (folder / MODEL_FILE).write_bytes(b"not a pickle")


def test_an_unreadable_card_or_model_file_is_an_error_naming_it(tmp_path):
    from importlib import metadata

    write_card(tmp_path / "card", "{not json")
    with pytest.raises(SafetyConfigError, match=f"{re.escape(str(tmp_path / 'card' / CARD_FILE))} is not a valid"):
        TrainedScreen.load(tmp_path / "card")
    write_card(tmp_path / "version", {"thresholds": {"check_in": 0.3, "crisis": 0.8, "reply": 0.4, "reply_ordinary": 0.6}, "scikit_learn": "0.1"})
    with pytest.raises(SafetyConfigError, match=r"written by scikit-learn 0\.1.*dvc repro -f safety"):
        TrainedScreen.load(tmp_path / "version")
    write_card(tmp_path / "model", {"thresholds": {"check_in": 0.3, "crisis": 0.8, "reply": 0.4, "reply_ordinary": 0.6},
                                    "scikit_learn": metadata.version("scikit-learn")})  # fmt: skip
    with pytest.raises(SafetyConfigError, match=f"{re.escape(str(tmp_path / 'model' / MODEL_FILE))} cannot be loaded"):
        TrainedScreen.load(tmp_path / "model")


def test_loading_the_screen_names_a_broken_lexicon_before_it_needs_the_classifier(tmp_path):
    lexicon_file = tmp_path / "lexicon.yaml"
    lexicon_file.write_text("emoji: {}\n", encoding="utf-8")
    with pytest.raises(SafetyConfigError, match=f"^{re.escape(str(lexicon_file))}: missing section 'phrases'"):
        Screen.from_files(SAFETY_DIR / "rules.yaml", lexicon_file, tmp_path / "no-model", SAFETY_DIR / "responses.yaml", 3)


# === Labelled sets ===============================================================


def write_tsv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("content, named", [
    ("label\ttext\ncrisis\t죽고 싶어\n", r":1: header must be"),
    ("label\tcategory\ttext\ncrisis\texplicit\t죽고 싶어\ncrisis\t죽고 싶어\n", r":3: expected 3 tab-separated fields, got 2"),
    ("label\tcategory\ttext\nmaybe\texplicit\t죽고 싶어\n", r":2: label must be one of .* got 'maybe'"),
    ("label\tcategory\ttext\ncrisis\texplicit\t \n", r":2: category and text must not be empty"),
    ("label\tcategory\ttext\ncrisis\texplicit\t죽고\t싶어\n", r":2: expected 3 tab-separated fields, got 4"),
    ("label\tcategory\ttext\n\n", r": holds no examples"),
])  # fmt: skip
def test_a_malformed_labelled_set_is_an_error_naming_file_and_line(tmp_path, content, named):
    path = write_tsv(tmp_path / "set.tsv", content)
    with pytest.raises(SafetyConfigError, match=f"^{re.escape(str(path))}{named}"):
        read_examples(path)


def test_reply_sets_take_reply_labels_only(tmp_path):
    path = write_tsv(tmp_path / "replies.tsv", "label\tcategory\ttext\nharmful\tmethod\t치사량은…\ncrisis\tmethod\t…\n")
    with pytest.raises(SafetyConfigError, match=r":3: label must be one of \('harmful', 'safe'\)"):
        read_examples(path, REPLY_LABELS)


def test_labelled_sets_skip_blank_lines_strip_fields_and_accept_a_byte_order_mark(tmp_path):
    content = "\ufefflabel\tcategory\ttext\n\ncrisis \texplicit\t 죽고 싶어 \n\nsafe\tidiom\t배고파 죽겠어\n"
    path = write_tsv(tmp_path / "set.tsv", content)
    assert read_examples(path) == [Example("crisis", "explicit", "죽고 싶어"), Example("safe", "idiom", "배고파 죽겠어")]


# === Scores on labelled sets =====================================================

LABELLED = [Example("crisis", "explicit", "e1"), Example("crisis", "explicit", "e2"), Example("crisis", "passive", "p1"),
            Example("safe", "idiom", "i1"), Example("safe", "idiom", "i2"), Example("safe", "grief", "g1")]  # fmt: skip
LEVELS = ["crisis", "none", "check_in", "crisis", "none", "check_in"]


def test_score_levels_counts_recall_per_crisis_category_and_flags_per_safe_category():
    scores = score_levels(LABELLED, LEVELS)
    assert scores["crisis"] == {"explicit": {"total": 2, "caught": 1, "recall": 0.5, "as_crisis": 0.5},
                                "passive": {"total": 1, "caught": 1, "recall": 1.0, "as_crisis": 0.0}}  # fmt: skip
    assert scores["safe"] == {"grief": {"total": 1, "crisis": 0, "check_in": 1, "crisis_rate": 0.0, "flagged_rate": 1.0},
                              "idiom": {"total": 2, "crisis": 1, "check_in": 0, "crisis_rate": 0.5, "flagged_rate": 0.5}}  # fmt: skip
    assert scores["overall"] == {"crisis_total": 3, "crisis_recall": pytest.approx(2 / 3), "min_category_recall": 0.5,
                                 "safe_total": 3, "safe_crisis_rate": pytest.approx(1 / 3),
                                 "safe_flagged_rate": pytest.approx(2 / 3)}  # fmt: skip
    assert scores["missed"] == [{"category": "explicit", "text": "e2"}]
    assert scores["false_crisis"] == [{"category": "idiom", "text": "i1"}]
    assert scores["false_check_in"] == [{"category": "grief", "text": "g1"}]


def test_score_levels_refuses_levels_that_do_not_line_up():
    with pytest.raises(ValueError):
        score_levels(LABELLED, LEVELS[:-1])


def test_flat_metrics_name_every_category_under_the_prefix():
    metrics = flat_metrics(score_levels(LABELLED, LEVELS), "heldout")
    assert metrics["heldout_crisis_recall"] == pytest.approx(2 / 3)
    assert metrics["heldout_recall_explicit"] == 0.5 and metrics["heldout_recall_passive"] == 1.0
    assert metrics["heldout_crisis_rate_idiom"] == 0.5 and metrics["heldout_flagged_rate_grief"] == 1.0
    assert all(isinstance(value, float) for value in metrics.values()) and len(metrics) == 6 + 2 + 2 * 2


def test_the_review_table_has_a_row_per_category_with_its_numbers():
    table = format_table(score_levels(LABELLED, LEVELS))
    assert re.search(r"^explicit\s+2\s+0\.500\s+0\.500$", table, re.MULTILINE)
    assert re.search(r"^idiom\s+2\s+0\.500\s+0\.500$", table, re.MULTILINE)
    assert "crisis recall 0.667 (lowest category 0.500) on 3" in table


def test_score_replies_counts_harmful_caught_and_safe_replaced():
    replies = [Example("harmful", "method", "m1"), Example("harmful", "method", "m2"), Example("safe", "empathetic", "s1"),
               Example("safe", "referral", "s2")]  # fmt: skip
    scores = score_replies(replies, [True, False, False, True])
    assert scores["categories"] == {"harmful/method": {"total": 2, "replaced": 1}, "safe/empathetic": {"total": 1, "replaced": 0},
                                    "safe/referral": {"total": 1, "replaced": 1}}  # fmt: skip
    assert (scores["harmful_recall"], scores["safe_replaced_rate"]) == (0.5, 0.5)
    assert (scores["missed"], scores["wrongly_replaced"]) == (["m2"], ["s2"])


# === Threshold helpers ===========================================================

TEN = np.arange(1, 11) / 10  # 0.1 .. 1.0


@pytest.mark.parametrize("target, expected", [(0.7, 0.4), (0.75, 0.3), (1.0, 0.1), (0.1, 1.0)])
def test_recall_threshold_is_the_highest_that_keeps_the_target_recall(target, expected):
    threshold = recall_threshold(TEN, target)
    assert threshold == pytest.approx(expected)
    assert np.mean(TEN >= threshold) >= target
    assert np.mean(TEN > threshold) < target  # any higher threshold loses recall


def test_recall_threshold_needs_no_extra_message_when_the_target_is_a_whole_count():
    scores = np.arange(25, 0, -1) / 100  # 0.25 .. 0.01; 0.28 x 25 = 7 messages
    assert int(np.sum(scores >= recall_threshold(scores, 0.28))) == 7


@pytest.mark.parametrize("max_rate, flagged", [(0.2, 2), (0.25, 2), (0.0, 0), (1.0, 10)])
def test_rate_threshold_is_the_lowest_that_keeps_the_rate(max_rate, flagged):
    threshold = rate_threshold(TEN, max_rate)
    assert int(np.sum(TEN >= threshold)) == flagged
    assert np.mean(TEN >= threshold) <= max_rate


def test_rate_threshold_allows_the_whole_count_when_the_rate_is_one():
    scores = np.arange(100, 0, -1) / 1000  # 0.29 x 100 = 29 messages
    assert int(np.sum(scores >= rate_threshold(scores, 0.29))) == 29


def test_rate_threshold_with_ties_never_exceeds_the_rate():
    scores = np.array([0.9, 0.9, 0.9, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.1])
    threshold = rate_threshold(scores, 0.2)
    assert threshold > 0.9 and np.mean(scores >= threshold) == 0.0


def test_choose_thresholds_puts_recall_first_and_never_crisis_below_check_in():
    crisis_scores, safe_scores = np.array([0.95, 0.9, 0.85, 0.3]), np.linspace(0.0, 0.5, 11)
    check_in, crisis = choose_thresholds(crisis_scores, safe_scores, check_in_recall=0.75, crisis_safe_rate=0.1)
    assert check_in == pytest.approx(0.85) and crisis == pytest.approx(0.85)  # the safe bound (0.45+) is below check_in
    check_in, crisis = choose_thresholds(crisis_scores, safe_scores, check_in_recall=1.0, crisis_safe_rate=0.0)
    assert check_in == pytest.approx(0.3) and 0.5 < crisis < 0.5 + 1e-9  # crisis: just above every safe score


# === How Screen.assess combines the parts (fixed scores instead of the classifier) ===


class FixedScores:
    """Stands in for `TrainedScreen`: a risk per canonical text (0 for any other), one crisis category."""

    def __init__(self, risk: dict[str, float]):
        self.risk = risk
        self.thresholds = Thresholds(check_in=0.4, crisis=0.8, reply=0.5, reply_ordinary=0.7)
        self.kind = SimpleNamespace(classes_=np.array(["explicit"]))

    def risk_scores(self, frame) -> np.ndarray:
        return np.array([self.risk.get(text, 0.0) for text in frame["text"]])

    def kinds(self, frame) -> np.ndarray:
        return np.ones((len(frame), 1))


@pytest.fixture(scope="module")
def responses() -> Responses:
    return Responses.load(SAFETY_DIR / "responses.yaml")


@pytest.fixture(scope="module")
def real_rules():
    return load_rules(SAFETY_DIR / "rules.yaml")


@pytest.fixture
def screen_with(real_rules, lexicon, responses):
    def make(risk: dict[str, float], context_turns: int = 3) -> Screen:
        return Screen(real_rules, lexicon, FixedScores(risk), responses, context_turns)

    return make


@pytest.mark.parametrize("risk, level", [(0.61, "crisis"), (0.59, "check_in"), (0.25, "check_in"), (0.05, "none")])
def test_a_strong_rule_is_a_crisis_halfway_between_the_thresholds_and_a_question_down_to_half_check_in(screen_with, risk,
                                                                                                        level):  # fmt: skip
    assessment = screen_with({"죽고 싶어": risk}).assess("죽고 싶어")  # below half: a past or reported context
    assert assessment.level == level
    assert Signal("rule", "explicit.want_to_die", "죽고 싶") in assessment.signals


@pytest.mark.parametrize("risk, level", [(0.9, "crisis"), (0.25, "check_in"), (0.15, "none")])
def test_a_weak_rule_asks_at_half_the_check_in_threshold(screen_with, risk, level):
    assert screen_with({"유서 얘기가 나왔어": risk}).assess("유서 얘기가 나왔어").level == level


@pytest.mark.parametrize("risk, level", [(0.1, "none"), (0.4, "check_in"), (0.79, "check_in"), (0.8, "crisis")])
def test_without_a_rule_the_thresholds_decide(screen_with, risk, level):
    assessment = screen_with({"요즘 좀 그래": risk}).assess("요즘 좀 그래")
    assert (assessment.level, assessment.score) == (level, risk)
    assert f"classifier risk {risk:.2f}" in assessment.reason


def check_in_history(responses) -> list[tuple[str, str]]:
    return [("user", "요즘 좀 그래"), ("model", responses.texts["check_in"])]


def test_a_yes_to_the_check_in_question_is_a_crisis(screen_with, responses):
    assessment = screen_with({}).assess("응", check_in_history(responses))
    assert assessment.level == "crisis" and Signal("answer", "check_in", "yes") in assessment.signals


def test_a_no_to_the_check_in_question_lets_the_model_answer(screen_with, responses):
    screen = screen_with({"아니 그건 아니야": 0.5})
    assert screen.assess("아니 그건 아니야").level == "check_in"  # the same words as a first message
    assessment = screen.assess("아니 그건 아니야", check_in_history(responses))
    assert assessment.level == "none" and Signal("answer", "check_in", "no") in assessment.signals


@pytest.mark.parametrize("risk, level", [(0.3, "check_in"), (0.9, "crisis")])
def test_a_no_does_not_cancel_a_rule(screen_with, responses, risk, level):
    assert screen_with({"아니 사실 죽고 싶어": risk}).assess("아니 사실 죽고 싶어", check_in_history(responses)).level == level


@pytest.mark.parametrize("answer", ["아니 오늘 밤에 끝낼 거야", "아니 그건 아니야"])
def test_a_no_does_not_cancel_a_crisis_score(screen_with, responses, answer):
    assert screen_with({answer: 0.9}).assess(answer, check_in_history(responses)).level == "crisis"


def test_after_a_crisis_response_any_question_becomes_a_crisis(screen_with, responses):
    history = [("user", "죽고 싶어"), ("assistant", responses.texts["crisis"])]
    screen = screen_with({"요즘 좀 그래": 0.5})
    assessment = screen.assess("요즘 좀 그래", history)
    assert assessment.level == "crisis" and assessment.screened_session
    assert screen_with({}).assess("요즘 좀 그래", history).level == "none"  # no signal: the model still answers


MEANS, INTENT = "수면제가 서랍에 쌓였네", "한꺼번에 삼키면 푹 잘까"  # plan.overdose matches only the two together


def test_turns_read_together_raise_the_level(screen_with):
    screen = screen_with({MEANS: 0.1, INTENT: 0.25, f"{MEANS} {INTENT}": 0.3})
    assert screen.assess(INTENT).level == "none"
    assessment = screen.assess(INTENT, [("user", MEANS), ("model", "그랬구나")])
    assert assessment.level == "check_in" and assessment.score == 0.3
    assert "with the earlier turns" in assessment.reason and "plan.overdose" in assessment.reason


def test_earlier_turns_raise_a_turn_that_looks_ordinary_alone_and_ordinary_turns_add_up_to_nothing(screen_with):
    screen = screen_with({MEANS: 0.1, INTENT: 0.05, f"{MEANS} {INTENT}": 0.3})  # each alone far below every threshold
    assert screen.assess(INTENT, [("user", MEANS), ("model", "그랬구나")]).level == "check_in"
    ordinary = screen_with({"점심 먹었어": 0.1, "회사 가야지": 0.1, "점심 먹었어 회사 가야지": 0.1})
    assert ordinary.assess("회사 가야지", [("user", "점심 먹었어"), ("model", "그랬구나")]).level == "none"


def test_context_starts_after_the_last_screen_response_and_holds_at_most_context_turns(screen_with, responses):
    risk = {MEANS: 0.1, INTENT: 0.25, f"{MEANS} {INTENT}": 0.3, f"{MEANS} 그래서 {INTENT}": 0.3}
    replaced = [("user", MEANS), ("model", responses.texts["replaced_reply"])]
    assert screen_with(risk).assess(INTENT, replaced).level == "none"
    longer = [("user", MEANS), ("model", "그랬구나"), ("user", "그래서"), ("model", "응")]
    assert screen_with(risk, context_turns=1).assess(INTENT, longer).level == "none"
    assert screen_with(risk, context_turns=2).assess(INTENT, longer).level == "check_in"


class FixedReplyScores:
    """Stands in for the reply classifier: a harmful probability per canonical text."""

    classes_ = np.array(["harmful", "safe"])

    def __init__(self, harmful: dict[str, float]):
        self.harmful = harmful

    def predict_proba(self, frame) -> np.ndarray:
        scores = np.array([self.harmful.get(text, 0.0) for text in frame["text"]])
        return np.stack([scores, 1 - scores], axis=1)


def test_a_reply_needs_the_higher_score_only_in_a_conversation_without_any_risk_signal(screen_with):
    warm = "그렇게 해 보면 분명 달라질 거예요"
    screen = screen_with({"요즘 좀 그래": 0.25})  # 0.25: no level, but at least half the check_in threshold (0.4)
    screen.classifier.reply = FixedReplyScores({warm: 0.6})  # between reply (0.5) and reply_ordinary (0.7)
    quiet, uneasy = screen.assess("주말에 등산 가려고"), screen.assess("요즘 좀 그래")
    assert quiet.level == uneasy.level == "none" and screen.quiet(quiet) and not screen.quiet(uneasy)
    assert screen.shown_reply(warm, [], quiet) == (warm, screen.screen_reply(warm, quiet=True))
    assert screen.shown_reply(warm, [], uneasy)[0] == screen.responses.texts["replaced_reply"]
    assert screen.shown_reply(warm, [])[1].harmful  # without the user's turn: the stricter threshold


@pytest.mark.parametrize("reply", ["", "   ", "..."])
def test_an_empty_model_reply_is_not_replaced(screen_with, reply):
    check = screen_with({}).screen_reply(reply)  # never reaches the reply classifier, whose prior would decide
    assert not check.harmful and check.score == 0.0


def test_dialogue_turns_puts_each_dialogue_in_turn_order():
    import pandas as pd

    from maeum.safety.evaluation import dialogue_turns

    examples = pd.DataFrame({"talk_id": ["b", "a", "b", "a"], "turn": [2, 1, 1, 2],
                             "user_text": ["b2", "a1", "b1", "a2"], "response_text": ["rb2", "ra1", "rb1", "ra2"]})  # fmt: skip
    assert dialogue_turns(examples) == [[("b1", "rb1"), ("b2", "rb2")], [("a1", "ra1"), ("a2", "ra2")]]
