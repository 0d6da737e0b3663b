"""The registry's decisions as pure functions: skip, the promotion gate, the champion history, the model card."""

import math

import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE

from maeum.config import PromotionParams
from maeum.feedback import VersionFeedback
from maeum.promotion import Champion, Evidence, Measured, decide_promotion, decide_skip, model_card, with_reviewers
from maeum.registry import _history, champion_stack, is_transient
from maeum.scorecard import paired_bootstrap

RULE = PromotionParams(min_improvement=0.01, confidence=0.95, generation_tolerance=0.05)
GOOD_REPLIES = {"chrf": 20.0, "emotion_reflection": 0.4, "end_of_turn_rate": 0.9}
SAFE_SCREEN = {"safety_crisis_recall": 0.97, "safety_min_category_recall": 0.92, "safety_safe_crisis_rate": 0.01,
               "safety_safe_flagged_rate": 0.06}  # fmt: skip


def champion(data: str = "d1", params: str = "p1") -> Champion:
    return Champion(version="3", run_id="r3", data_version=data, params_hash=params)


def measured(bpc: float, generation=None, safety=None) -> Measured:
    return Measured(bpc, dict(generation or GOOD_REPLIES), dict(safety or SAFE_SCREEN))


def evidence(challenger_bpc=1.0, base_bpc=2.0, champion_bpc=1.2, share=0.99, generation=None, safety=None,
             champion_generation=None) -> Evidence:  # fmt: skip
    if champion_bpc is None:
        return Evidence(measured(challenger_bpc, generation, safety), base_bpc)
    boot = {"relative_improvement": (champion_bpc - challenger_bpc) / champion_bpc, "share_a_better": share,
            "interval_low": 0.05, "interval_high": 0.2}  # fmt: skip
    return Evidence(measured(challenger_bpc, generation, safety), base_bpc, measured(champion_bpc, champion_generation), "3",
                    boot)  # fmt: skip


def failed(decision) -> list[str]:
    return [check.name for check in decision.checks if not check.passed]


# === The promotion gate ===


def test_a_challenger_that_passes_every_check_is_promoted_and_every_check_is_recorded():
    decision = decide_promotion(evidence(), RULE)
    assert decision.promote and failed(decision) == []
    assert [c.name for c in decision.checks] == ["beats its base", "beats the champion", "keeps the crisis screen",
                                                 "keeps its replies"]  # fmt: skip
    assert (decision.challenger_bpc, decision.champion_bpc, decision.champion_version) == (1.0, 1.2, "3")
    assert "1.2000" in decision.checks[1].detail and "99.0%" in decision.checks[1].detail


def test_the_first_model_needs_only_to_beat_its_base():
    decision = decide_promotion(evidence(champion_bpc=None), RULE)
    assert decision.promote and "first model" in decision.checks[1].detail
    assert not decide_promotion(evidence(challenger_bpc=2.5, base_bpc=2.0, champion_bpc=None), RULE).promote


def test_a_gain_inside_the_noise_is_not_enough():
    assert failed(decide_promotion(evidence(share=0.80), RULE)) == ["beats the champion"]
    assert failed(decide_promotion(evidence(challenger_bpc=1.195, champion_bpc=1.2), RULE)) == ["beats the champion"]


def test_a_challenger_worse_than_its_base_is_refused():
    assert "beats its base" in failed(decide_promotion(evidence(challenger_bpc=1.0, base_bpc=0.9, champion_bpc=1.2), RULE))


@pytest.mark.parametrize("name, value", [("safety_crisis_recall", 0.96), ("safety_min_category_recall", 0.9),
                                         ("safety_safe_crisis_rate", 0.02), ("safety_safe_flagged_rate", 0.07)])  # fmt: skip
def test_a_worse_crisis_screen_is_refused(name, value):
    decision = decide_promotion(evidence(safety={**SAFE_SCREEN, name: value}), RULE)
    assert failed(decision) == ["keeps the crisis screen"] and name in decision.reason


@pytest.mark.parametrize("name", ["chrf", "emotion_reflection", "end_of_turn_rate"])
def test_replies_worse_beyond_the_tolerance_are_refused_and_within_it_pass(name):
    slightly = {**GOOD_REPLIES, name: GOOD_REPLIES[name] * 0.97}
    much = {**GOOD_REPLIES, name: GOOD_REPLIES[name] * 0.8}
    assert decide_promotion(evidence(generation=slightly), RULE).promote
    assert failed(decide_promotion(evidence(generation=much), RULE)) == ["keeps its replies"]


@pytest.mark.parametrize("name", ["emotion_reflection", "end_of_turn_rate"])
def test_a_rate_drop_counts_only_beyond_sampling_noise(name):
    def replies(value, generations):
        return {**GOOD_REPLIES, name: value, "generations": generations}

    # one reply in four: a 25-point drop that a coin could make
    assert decide_promotion(evidence(generation=replies(0.25, 4), champion_generation=replies(0.5, 4)), RULE).promote
    # the same drop over 400 replies each is real
    assert failed(decide_promotion(evidence(generation=replies(0.25, 400), champion_generation=replies(0.5, 400)),
                                   RULE)) == ["keeps its replies"]  # fmt: skip
    # chrF is no share of replies: the tolerance alone decides
    assert failed(decide_promotion(evidence(generation={**replies(0.5, 4), "chrf": 10.0},
                                            champion_generation=replies(0.5, 4)), RULE)) == ["keeps its replies"]  # fmt: skip


@pytest.mark.parametrize("bpc", [math.nan, math.inf])
def test_a_failed_evaluation_is_never_promoted(bpc):
    assert not decide_promotion(evidence(challenger_bpc=bpc), RULE).promote
    assert not decide_promotion(evidence(challenger_bpc=bpc, champion_bpc=None), RULE).promote


def test_the_decision_serialises_with_its_checks():
    record = decide_promotion(evidence(share=0.5), RULE).as_dict()
    assert record["promote"] is False and len(record["checks"]) == 4 and record["checks"][1]["passed"] is False


# === The paired bootstrap ===


def test_bootstrap_finds_a_clear_gain_and_not_a_coin_flip():
    rng = np.random.default_rng(0)
    characters = rng.integers(20, 60, size=200).astype(float)
    groups = np.repeat(np.arange(50), 4).astype(str)
    base = characters * 1.5 + rng.normal(0, 5, 200)
    clear = paired_bootstrap(base * 0.8, base, characters, groups, 500, seed=1)
    assert clear["share_a_better"] == 1.0 and clear["relative_improvement"] == pytest.approx(0.2, abs=1e-9)
    assert clear["bpc_a"] == pytest.approx((base * 0.8).sum() / characters.sum() / math.log(2))
    noise = paired_bootstrap(base + rng.normal(0, 5, 200), base, characters, groups, 500, seed=1)
    assert 0.05 < noise["share_a_better"] < 0.95 and noise["interval_low"] < 0 < noise["interval_high"]


def test_bootstrap_resamples_whole_dialogues():
    characters = np.ones(4)
    # Two dialogues: in one A is much better, in the other much worse; per dialogue the resample keeps them paired.
    result = paired_bootstrap(np.array([1.0, 1.0, 9.0, 9.0]), np.array([9.0, 9.0, 1.0, 1.0]), characters,
                              np.array(["a", "a", "b", "b"]), 400, seed=0)  # fmt: skip
    assert 0.2 < result["share_a_better"] < 0.8


# === The champion's history ===


def event(seq, version, action="promote", alias="champion"):
    return {"seq": seq, "alias": alias, "version": version, "action": action}


def test_rollback_walks_back_through_the_champions_in_order():
    history = [event(1, "1"), event(2, "3"), event(3, "2", alias="challenger", action="nominate"), event(4, "4")]
    assert champion_stack(history) == ["1", "3", "4"]
    history.append(event(5, "3", action="rollback"))
    assert champion_stack(history) == ["1", "3"]
    history.append(event(6, "1", action="rollback"))
    assert champion_stack(history) == ["1"]


# === Skipping ===


def test_same_data_and_params_as_the_champion_is_skipped():
    decision = decide_skip(champion(), "d1", "p1", force=False)
    assert decision.skip and decision.reason == "nothing changed"


def test_force_always_trains():
    assert not decide_skip(champion(), "d1", "p1", force=True).skip


@pytest.mark.parametrize(("data", "params", "changed"), [("d2", "p1", "data"), ("d1", "p2", "params"),
                                                         ("d2", "p2", "data and params")])  # fmt: skip
def test_changed_data_or_params_trains_and_says_what_changed(data, params, changed):
    decision = decide_skip(champion(), data, params, force=False)
    assert not decision.skip and decision.reason.startswith(changed + " changed")


def test_no_champion_trains():
    assert not decide_skip(None, "d1", "p1", force=False).skip


# === The model card ===


def test_model_card_holds_data_metrics_decision_safety_samples_and_limits():
    metrics = {"val_bpc_base": 2.0, "val_bpc_tuned": 1.0, "chrf_base": 1.0, "chrf_tuned": 12.0, **SAFE_SCREEN}
    decision = decide_promotion(evidence(), RULE)
    card = model_card("maeum-lora", "4", {"data version": "`abc`", "training examples": 1141}, metrics, decision,
                      [{"prompt": "요즘 너무 지쳐", "reference": "많이 지치셨군요.", "reply": "그러셨군요."}],
                      VersionFeedback("maeum-lora/4", turns=20, rated=12, helpful_rate=0.75, mean_empathy=4.1))  # fmt: skip
    for expected in ("# maeum-lora v4", "`abc`", "| val_bpc | 2.0000 | 1.0000 |", "## Promotion", "keeps the crisis screen",
                     "min_category_recall: 0.920", "12 rated replies of 20 served turns; helpful 75%, mean empathy 4.10 / 5",
                     "요즘 너무 지쳐", "## Known limits"):  # fmt: skip
        assert expected in card, expected


def test_reviewers_section_is_added_once_and_then_updated():
    card = model_card("maeum-lora", "4", {}, {}, None, [])
    first = with_reviewers(card, VersionFeedback("maeum-lora/4", 3, 2, 0.5, None))
    assert first.count("## Reviewers") == 1 and "helpful 50%, mean empathy -" in first
    assert first.index("## Reviewers") < first.index("## Sample replies")
    second = with_reviewers(first, VersionFeedback("maeum-lora/4", 9, 8, 0.75, 4.0))
    assert second.count("## Reviewers") == 1 and "8 rated replies of 9" in second and "2 rated" not in second


# === Retry classification and model input ===


def test_transient_errors_are_retried_and_permanent_ones_are_not():
    assert is_transient(MlflowException("database is locked", TEMPORARILY_UNAVAILABLE))
    assert is_transient(MlflowException("API request to http://127.0.0.1:5000 failed with exception ..."))
    assert is_transient(ConnectionRefusedError())
    assert is_transient(TimeoutError())
    assert not is_transient(MlflowException("no such model", RESOURCE_DOES_NOT_EXIST))
    assert not is_transient(MlflowException("bad name", INVALID_PARAMETER_VALUE))
    assert not is_transient(ValueError("bug"))


def test_history_accepts_json_pairs_dicts_or_nothing():
    pairs = [("user", "안녕"), ("model", "안녕하세요")]
    assert _history('[["user", "안녕"], ["model", "안녕하세요"]]') == pairs
    assert _history([{"role": "user", "content": "안녕"}, {"role": "model", "content": "안녕하세요"}]) == pairs
    assert _history(None) == _history(math.nan) == _history("") == []
