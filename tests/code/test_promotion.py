import math

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE

from maeum.registry import Champion, _history, decide_promotion, decide_skip, is_transient


def champion(loss: float | None = 2.0, data: str = "d1", params: str = "p1") -> Champion:
    return Champion(version="3", run_id="r3", data_version=data, params_hash=params, val_loss_tuned=loss)


# === Promotion ===


def test_first_model_becomes_champion():
    decision = decide_promotion(2.5, None)
    assert decision.promote and decision.champion_loss is None and "first model" in decision.reason


def test_lower_val_loss_is_promoted_and_both_numbers_are_kept():
    decision = decide_promotion(1.9, champion(2.0))
    assert decision.promote
    assert (decision.challenger_loss, decision.champion_loss, decision.champion_version) == (1.9, 2.0, "3")


@pytest.mark.parametrize("loss", [2.0, 2.1, 50.0])
def test_equal_or_worse_val_loss_keeps_the_champion(loss):
    decision = decide_promotion(loss, champion(2.0))
    assert not decision.promote and "champion v3" in decision.reason


@pytest.mark.parametrize("loss", [None, math.nan, math.inf])
def test_a_failed_evaluation_is_never_promoted(loss):
    assert not decide_promotion(loss, champion(2.0)).promote
    assert not decide_promotion(loss, None).promote


def test_a_champion_without_a_recorded_loss_is_replaced():
    assert decide_promotion(3.0, champion(None)).promote


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


# === Retry classification ===


def test_transient_errors_are_retried_and_permanent_ones_are_not():
    assert is_transient(MlflowException("database is locked", TEMPORARILY_UNAVAILABLE))
    assert is_transient(MlflowException("API request to http://127.0.0.1:5000 failed with exception ..."))
    assert is_transient(ConnectionRefusedError())
    assert is_transient(TimeoutError())
    assert not is_transient(MlflowException("no such model", RESOURCE_DOES_NOT_EXIST))
    assert not is_transient(MlflowException("bad name", INVALID_PARAMETER_VALUE))
    assert not is_transient(ValueError("bug"))


# === Model input ===


def test_history_accepts_json_pairs_dicts_or_nothing():
    pairs = [("user", "안녕"), ("model", "안녕하세요")]
    assert _history('[["user", "안녕"], ["model", "안녕하세요"]]') == pairs
    assert _history([{"role": "user", "content": "안녕"}, {"role": "model", "content": "안녕하세요"}]) == pairs
    assert _history(None) == _history(math.nan) == _history("") == []
