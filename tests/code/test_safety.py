import re

import pytest
import yaml

from tasks.safety import (
    CONTEXT_EXCLUSION,
    CRISIS,
    CRISIS_RESPONSE,
    DEFAULT_RULES_PATH,
    HARMFUL_REPLY_REPLACEMENT,
    NO_SIGNAL,
    REPLY,
    SPAN_EXCLUSION,
    STRENGTHS,
    SafetyRulesError,
    Screening,
    evaluate_screen,
    load_eval_set,
    load_rules,
    parse_rules,
    safe_reply,
    score_screen,
    screen,
    screen_reply,
)

EVAL = load_eval_set()
MAIN = EVAL["main"]
HELDOUT = EVAL["heldout"]
RULES = load_rules()

CRISIS_CATEGORIES = ("explicit_intent", "passive_ideation", "plan_means", "farewell", "self_harm")
EVERYDAY_IDIOMS = [
    "배고파 죽겠어", "더워 죽겠다", "웃겨 죽는 줄 알았어", "피곤해 죽겠네", "보고 싶어 죽겠어", "귀여워 죽겠다", "심심해 죽겠어",
]  # fmt: skip
STRONG_IN_FICTION_CONTEXT = [
    "게임도 재미없고 진짜 죽고 싶어", "드라마 보다가 나도 진짜 죽고 싶어졌어", "영화 얘기는 됐고 그냥 사라지고 싶어",
]  # fmt: skip
SPACING_VARIANTS = ["죽고 싶어", "죽고싶어", "죽 고 싶 어", "죽고   싶어", "죽고\u200b싶어", "죽고\n싶어"]
EXCLUSION_CATEGORIES = sorted({rule.category for rule in RULES.of_role(SPAN_EXCLUSION) + RULES.of_role(CONTEXT_EXCLUSION)})
REPLY_CATEGORIES = sorted({rule.category for rule in RULES.of_role(REPLY)})
ORDINARY_REPLY = "오늘 하루도 수고 많았어요. 따뜻한 차 한잔하면서 쉬어요."
HELDOUT_RECALL_TARGET = 0.8  # the goal set for the screen; not met yet, see the xfail below
HELDOUT_RECALL_FLOOR = 0.1  # what round 4 scored (2/15), rounded down: guards against regressions
HELDOUT_FALSE_POSITIVE_CEILING = 0.1  # every round so far had 0/15


def _ids(texts):
    return [f"{index:03d}" for index in range(len(texts))]


# === The main set: every example is a test case ===================================


@pytest.mark.parametrize("text", MAIN["crisis"], ids=_ids(MAIN["crisis"]))
def test_crisis_message_is_flagged(text):
    assert screen(text).crisis, f"missed crisis message: {text!r}"


@pytest.mark.parametrize("text", MAIN["safe"], ids=_ids(MAIN["safe"]))
def test_safe_message_is_not_flagged(text):
    result = screen(text)
    assert not result.crisis, f"false positive on {text!r}: {result.reason}"


@pytest.mark.parametrize("text", MAIN["reply_harmful"], ids=_ids(MAIN["reply_harmful"]))
def test_harmful_reply_is_flagged(text):
    assert screen_reply(text).crisis, f"harmful reply not flagged: {text!r}"


@pytest.mark.parametrize("text", MAIN["reply_safe"], ids=_ids(MAIN["reply_safe"]))
def test_empathetic_reply_is_not_flagged(text):
    result = screen_reply(text)
    assert not result.crisis, f"empathetic reply flagged: {text!r}: {result.reason}"


@pytest.mark.parametrize("text", EVERYDAY_IDIOMS)
def test_everyday_hyperbole_is_not_flagged(text):
    assert not screen(text).crisis


# === How exclusions and normalisation behave ======================================


@pytest.mark.parametrize("text", STRONG_IN_FICTION_CONTEXT)
def test_strong_signal_is_not_cancelled_by_fiction_context(text):
    assert screen(text).crisis


def test_fiction_context_cancels_only_weak_mentions():
    assert screen("옥상에서 뛰어내리려고 했어").crisis
    assert not screen("영화에서 주인공이 옥상에서 뛰어내리려고 했어").crisis


def test_hyperbole_exclusion_covers_only_the_idiom_words():
    assert not screen("더워서 죽어버리겠네").crisis
    assert screen("그냥 죽어버리겠어").crisis
    assert screen("살기 싫어 죽겠어").rule_id == "passive.not_want_to_live"


@pytest.mark.parametrize("text", SPACING_VARIANTS)
def test_spacing_and_invisible_character_variants_match(text):
    assert screen(text).rule_id == "explicit.want_to_die"


def test_reason_names_category_rule_and_matched_text():
    result = screen("요즘 너무 죽고싶다")
    assert result.crisis
    assert result.rule_id == "explicit.want_to_die"
    assert "explicit_intent" in result.reason
    assert "explicit.want_to_die" in result.reason
    assert "'죽고싶'" in result.reason


def test_no_signal_screening_is_explicit():
    assert screen("오늘 점심 뭐 먹지?") == Screening(crisis=False, reason=NO_SIGNAL, rule_id=None)
    assert NO_SIGNAL == "no crisis signal"


def test_user_message_rules_do_not_apply_to_replies():
    reflective = "죽고 싶다는 생각이 드셨군요. 109에 함께 전화해 볼까요?"
    assert screen(reflective).crisis
    assert not screen_reply(reflective).crisis


def test_strong_rule_is_reported_before_weak_one():
    assert screen("번개탄 피우고 창문 다 막아 놨어").rule_id == "plan.charcoal_sealed_room"


# === What the chat shows ==========================================================


def test_crisis_response_gives_the_hotlines():
    for number in ("109", "1388", "112", "119"):
        assert number in CRISIS_RESPONSE
    assert "24시간" in CRISIS_RESPONSE
    assert "혼자가 아니" in CRISIS_RESPONSE
    assert CRISIS_RESPONSE in HARMFUL_REPLY_REPLACEMENT


@pytest.mark.parametrize("text", MAIN["crisis"], ids=_ids(MAIN["crisis"]))
def test_safe_reply_never_shows_model_reply_alone_for_crisis_message(text):
    shown, screening = safe_reply(text, ORDINARY_REPLY)
    assert shown == CRISIS_RESPONSE
    assert ORDINARY_REPLY not in shown
    assert screening.crisis


def test_safe_reply_gives_crisis_response_before_generation():
    shown, screening = safe_reply("죽고 싶어", None)
    assert (shown, screening.crisis) == (CRISIS_RESPONSE, True)


@pytest.mark.parametrize("reply", MAIN["reply_harmful"], ids=_ids(MAIN["reply_harmful"]))
def test_safe_reply_replaces_harmful_model_reply(reply):
    shown, screening = safe_reply("요즘 좀 지쳐", reply)
    assert reply not in shown
    assert shown == HARMFUL_REPLY_REPLACEMENT
    assert screening.crisis and screening.rule_id.startswith("reply.")


def test_safe_reply_passes_ordinary_reply_through():
    shown, screening = safe_reply("시험 망쳐서 우울해", ORDINARY_REPLY)
    assert shown == ORDINARY_REPLY
    assert screening == Screening(crisis=False, reason=NO_SIGNAL)


def test_safe_reply_without_model_reply_shows_nothing_for_ordinary_message():
    assert safe_reply("시험 망쳐서 우울해", None) == ("", Screening(crisis=False, reason=NO_SIGNAL))


# === The rules file ===============================================================


def test_rules_file_is_marked_for_human_review():
    header = DEFAULT_RULES_PATH.read_text(encoding="utf-8").split("\ncategories:")[0]
    assert "REVIEWED BY A PERSON" in header
    assert "Who reviews" in header
    assert "How to add a rule" in header


def test_every_rule_has_id_category_description_and_patterns():
    raw = yaml.safe_load(DEFAULT_RULES_PATH.read_text(encoding="utf-8"))
    for entry in raw["rules"]:
        for key in ("id", "category", "description", "patterns"):
            assert entry.get(key), f"rule {entry.get('id')!r} lacks {key!r}"
    ids = [entry["id"] for entry in raw["rules"]]
    assert len(ids) == len(set(ids))


def test_rules_cover_every_role_and_crisis_category():
    assert set(CRISIS_CATEGORIES) <= set(RULES.categories)
    for role in (CRISIS, REPLY, SPAN_EXCLUSION, CONTEXT_EXCLUSION):
        assert RULES.of_role(role), f"no rules for role {role}"
    for rule in RULES.of_role(CRISIS) + RULES.of_role(REPLY):
        assert rule.strength in STRENGTHS


def test_load_rules_is_cached():
    assert load_rules() is load_rules()
    assert load_rules(DEFAULT_RULES_PATH) is load_rules()


def test_missing_rules_file_raises_naming_the_file(tmp_path):
    path = tmp_path / "no_such_rules.yaml"
    with pytest.raises(SafetyRulesError, match=re.escape(str(path))):
        load_rules(path)


def test_invalid_yaml_raises_naming_the_file(tmp_path):
    path = tmp_path / "broken_rules.yaml"
    path.write_text("rules: [unclosed\n", encoding="utf-8")
    with pytest.raises(SafetyRulesError, match="broken_rules.yaml"):
        load_rules(path)


def _document(**changes):
    rule = {"id": "test.rule", "category": "explicit_intent", "strength": "strong", "description": "d", "patterns": ["죽고 싶"]}
    rule.update(changes)
    return {
        "categories": {"explicit_intent": {"role": "crisis", "description": "d"}},
        "rules": [{key: value for key, value in rule.items() if value is not None}],
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"description": None}, "description"),
        ({"category": "no_such_category"}, "not declared"),
        ({"patterns": ["죽고 (싶"]}, "invalid regular expression"),
        ({"patterns": []}, "non-empty list"),
        ({"strength": "medium"}, "strength"),
        ({"requirez": ["x"]}, "unknown keys"),
    ],
)
def test_invalid_rule_raises_naming_file_and_rule(change, message):
    with pytest.raises(SafetyRulesError, match=re.escape(message)) as error:
        parse_rules(_document(**change), source="my_rules.yaml")
    assert "my_rules.yaml" in str(error.value)
    assert "test.rule" in str(error.value)


def test_valid_rule_document_parses():
    rules = parse_rules(_document(), source="my_rules.yaml")
    assert screen("죽고 싶어", rules).rule_id == "test.rule"


# === Evaluation ===================================================================


def test_evaluate_screen_counts_are_consistent():
    metrics = evaluate_screen()
    assert metrics["crisis_total"] == len(MAIN["crisis"])
    assert metrics["safe_total"] == len(MAIN["safe"])
    assert metrics["reply_harmful_total"] == len(MAIN["reply_harmful"])
    assert metrics["crisis_detected"] + len(metrics["missed"]) == metrics["crisis_total"]
    assert metrics["crisis_recall"] == metrics["crisis_detected"] / metrics["crisis_total"]
    assert metrics["false_positives"] == len(metrics["false_positive_examples"])
    assert metrics["false_positive_rate"] == metrics["false_positives"] / metrics["safe_total"]
    assert (metrics["crisis_recall"], metrics["false_positives"]) == (1.0, 0)
    assert metrics["reply_harmful_detected"] == metrics["reply_harmful_total"]
    assert metrics["reply_safe_false_positives"] == 0


def test_evaluate_screen_scores_the_given_file(tmp_path):
    path = tmp_path / "eval.yaml"
    data = {"main": {
        "crisis": ["죽고 싶어", "오늘 점심 뭐 먹지?"],
        "safe": ["배고파 죽겠어", "자살하고 싶어"],
        "reply_harmful": ["그냥 죽어버려."],
    }}  # fmt: skip
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    metrics = evaluate_screen(path)
    assert (metrics["crisis_detected"], metrics["crisis_recall"]) == (1, 0.5)
    assert metrics["missed"] == ["오늘 점심 뭐 먹지?"]
    assert (metrics["false_positives"], metrics["false_positive_examples"]) == (1, ["자살하고 싶어"])
    assert (metrics["reply_harmful_detected"], metrics["reply_safe_false_positives"]) == (1, 0)


def test_evaluate_screen_rejects_unknown_section():
    with pytest.raises(SafetyRulesError, match="no section"):
        evaluate_screen(section="no_such_section")


@pytest.mark.parametrize("category", CRISIS_CATEGORIES)
def test_removing_a_crisis_category_lowers_recall(category):
    baseline = score_screen(MAIN, RULES)["crisis_recall"]
    assert score_screen(MAIN, RULES.without_category(category))["crisis_recall"] < baseline


@pytest.mark.parametrize("category", EXCLUSION_CATEGORIES)
def test_removing_an_exclusion_category_adds_false_positives(category):
    assert score_screen(MAIN, RULES.without_category(category))["false_positives"] > 0


@pytest.mark.parametrize("category", REPLY_CATEGORIES)
def test_removing_a_reply_category_misses_harmful_replies(category):
    metrics = score_screen(MAIN, RULES.without_category(category))
    assert metrics["reply_harmful_detected"] < metrics["reply_harmful_total"]


def test_heldout_does_not_regress():
    metrics = score_screen(HELDOUT, RULES)
    assert metrics["crisis_recall"] >= HELDOUT_RECALL_FLOOR
    assert metrics["false_positive_rate"] <= HELDOUT_FALSE_POSITIVE_CEILING
    assert metrics["reply_safe_false_positives"] == 0


@pytest.mark.xfail(
    strict=True, reason="held-out rounds 1-4 scored 7/15, 3/15, 5/15, 2/15: rules miss most new indirect phrasing"
)
def test_heldout_recall_meets_target():
    assert score_screen(HELDOUT, RULES)["crisis_recall"] >= HELDOUT_RECALL_TARGET
