"""The train-lora flow, run for real: train, skip, force, promote or not, fail on bad data.

The runs build on each other (one MLflow registry), so each is a session fixture that
depends on the one before it; the tests only look at the results.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from flows import stages
from flows.train_lora import TIMEZONE, WEEKLY_CRON, overrides, train_lora
from maeum import registry
from maeum.config import load_params
from tests.conftest import REPO
from tests.flows.conftest import working_in, write_params

MODEL_NAME = "maeum-lora"


# === Helpers: what the Prefect server and the MLflow store recorded ===


def run_flow(project: Path, **parameters):
    with working_in(project):
        state = train_lora(**parameters, return_state=True)
        return state, state.result(raise_on_failure=False)


def task_states(state) -> dict[str, list[str]]:
    """Task name -> state names of its runs in this flow run ("Completed", "Cached", "Failed")."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    names: dict[str, list[str]] = {}
    for run in sorted(runs, key=lambda r: r.expected_start_time):
        names.setdefault(run.name.rsplit("-", 1)[0], []).append(run.state.name)  # "find-champion-3f2" -> "find-champion"
    return names


def summary_artifact(state) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[stages.SUMMARY_ARTIFACT_KEY]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))  # fmt: skip
    assert len(artifacts) == 1
    return artifacts[0].data


def mlflow_client():
    from mlflow import MlflowClient

    from maeum import tracking

    return MlflowClient(tracking.tracking_uri())


def champion_version() -> str | None:
    champion = registry.get_champion(MODEL_NAME)
    return champion.version if champion else None


# === The runs, in order ===


@pytest.fixture(scope="session")
def first_run(flow_env):
    return run_flow(flow_env)


@pytest.fixture(scope="session")
def unchanged_run(first_run, flow_env):
    return run_flow(flow_env)


@pytest.fixture(scope="session")
def forced_run(unchanged_run, flow_env):
    return run_flow(flow_env, force=True)


@pytest.fixture(scope="session")
def worse_run(forced_run, flow_env):
    """A challenger that barely trains (learning rate 1e-6), after its tokenized data were deleted."""
    params_file = write_params(flow_env / "params-worse.yaml", flow_env / "params.yaml", {"train.learning_rate": 1.0e-6})
    shutil.rmtree(flow_env / load_params(params_file).tokenize.out_dir)
    return run_flow(flow_env, params_file=params_file.name)


@pytest.fixture(scope="session")
def better_run(worse_run, flow_env):
    """A challenger that trains twice as long as the champion."""
    return run_flow(flow_env, epochs=2)


@pytest.fixture(scope="session")
def broken_data_run(better_run, flow_env):
    broken = flow_env / "broken"
    shutil.copytree(flow_env / "corpus", broken)
    text = (broken / "Training.json").read_text(encoding="utf-8")
    (broken / "Training.json").write_text(text[: len(text) // 2], encoding="utf-8")  # cut mid-record
    with working_in(flow_env):
        runs_before = len(mlflow_client().search_runs([mlflow_client().get_experiment_by_name("maeum-lora").experiment_id]))
        champion_before = champion_version()
    state, outcome = run_flow(flow_env, data_dir="broken")
    return state, outcome, runs_before, champion_before


# === Flow behaviour ===


def test_first_run_trains_registers_and_becomes_champion(first_run, in_project):
    state, outcome = first_run
    assert state.is_completed(), outcome
    assert outcome["status"] == "trained" and outcome["model_version"] == "1" and outcome["promoted"] is True
    assert champion_version() == "1"
    states = task_states(state)
    for name in ("validate", "preprocess", "model", "tokenize", "train", "evaluate", "register", "promote"):
        assert states[name] == ["Completed"], (name, states)


def test_training_run_links_mlflow_and_prefect(first_run, in_project):
    state, outcome = first_run
    client = mlflow_client()
    run = client.get_run(outcome["run_id"])
    assert run.data.tags["prefect.flow_run_id"] == str(state.state_details.flow_run_id)
    assert run.data.tags[registry.TAG_PROMOTION] == "promoted"
    assert "val_loss_tuned" in run.data.metrics and "train_loss" in run.data.metrics
    assert all("." in name for name in run.data.params)  # only params.yaml's dotted keys: logging the model adds none
    version = client.get_model_version(MODEL_NAME, "1")
    assert version.run_id == outcome["run_id"]  # the model was logged in the training run itself
    assert version.tags["maeum.data_version"] == outcome["data_version"]
    assert version.tags["maeum.params_hash"] == outcome["params_hash"]
    assert float(version.tags[registry.TAG_VAL_LOSS]) == pytest.approx(outcome["metrics"]["val_loss_tuned"])
    markdown = summary_artifact(state)
    assert outcome["run_id"] in markdown and "first model: no champion yet" in markdown


def test_unchanged_data_and_params_are_skipped(unchanged_run, first_run):
    state, outcome = unchanged_run
    assert state.is_completed()
    assert outcome["status"] == "skipped" and outcome["reason"] == "nothing changed"
    assert outcome["run_id"] == first_run[1]["run_id"] and outcome["champion_version"] == "1"
    assert set(task_states(state)) == {"fingerprint", "find-champion", "report"}
    assert "nothing changed" in summary_artifact(state)


def test_force_trains_again_reusing_the_cached_data_stages(forced_run, first_run):
    state, outcome = forced_run
    assert state.is_completed(), outcome
    assert outcome["status"] == "trained" and outcome["reason"].startswith("forced")
    assert outcome["run_id"] != first_run[1]["run_id"] and outcome["model_version"] == "2"
    states = task_states(state)
    assert states["preprocess"] == states["model"] == states["tokenize"] == ["Cached"]
    assert states["train"] == ["Completed"]


def test_a_worse_challenger_is_registered_but_not_promoted(worse_run, first_run, in_project):
    state, outcome = worse_run
    assert state.is_completed(), outcome
    assert outcome["model_version"] == "3" and outcome["promoted"] is False
    assert outcome["promotion"]["challenger_loss"] > first_run[1]["metrics"]["val_loss_tuned"]
    assert champion_version() == "1"
    run = mlflow_client().get_run(outcome["run_id"])
    assert run.data.tags[registry.TAG_PROMOTION] == "kept"
    assert run.data.metrics[registry.METRIC_CHAMPION_LOSS] == pytest.approx(first_run[1]["metrics"]["val_loss_tuned"])
    assert mlflow_client().get_model_version(MODEL_NAME, "3").tags[registry.TAG_PROMOTED] == "false"


def test_deleted_outputs_of_a_cached_stage_are_rebuilt(worse_run, flow_env):
    state, _ = worse_run
    states = task_states(state)
    assert states["tokenize"] == ["Cached", "Completed"]  # cache hit, files missing, ran again
    assert states["preprocess"] == ["Cached"]
    assert (flow_env / "data" / "tokenized" / "train.npz").is_file()


def test_a_better_challenger_becomes_champion(better_run, first_run, in_project):
    state, outcome = better_run
    assert state.is_completed(), outcome
    assert outcome["promoted"] is True and outcome["model_version"] == "4"
    assert outcome["metrics"]["val_loss_tuned"] < first_run[1]["metrics"]["val_loss_tuned"]
    assert champion_version() == "4"
    assert "promoted" in summary_artifact(state)


def test_the_champion_answers_through_mlflow_pyfunc_like_chat(better_run, in_project):
    import mlflow.pyfunc
    import pandas as pd

    from tasks import safety

    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    assert model.metadata.run_id == better_run[1]["run_id"]
    replies = model.predict(pd.DataFrame({
        "message": ["요즘 회사 일 때문에 너무 힘들어.", "친구랑 싸웠어.", "요즘 그냥 죽고 싶어."],
        "history": [None, json.dumps([["user", "안녕"], ["model", "안녕하세요. 무슨 일 있으세요?"]], ensure_ascii=False), None],
    }))  # fmt: skip
    assert len(replies) == 3 and all(isinstance(reply, str) for reply in replies)
    assert replies[2] == safety.CRISIS_RESPONSE  # screened as in chat: the model is not asked
    assert model.predict(pd.DataFrame({"message": ["요즘 회사 일 때문에 너무 힘들어."]})) == replies[:1]  # history is optional


def test_invalid_data_fails_before_training_and_keeps_the_champion(broken_data_run, in_project):
    state, outcome, runs_before, champion_before = broken_data_run
    assert state.is_failed()
    assert "Training.json" in str(outcome)  # ValidationFailed names the file
    states = task_states(state)
    assert states["validate"] == ["Failed"] and "train" not in states
    assert champion_version() == champion_before == "4"
    experiment = mlflow_client().get_experiment_by_name("maeum-lora")
    assert len(mlflow_client().search_runs([experiment.experiment_id])) == runs_before


# === Pieces of the flow that need no server ===


def test_data_stage_inputs_change_only_with_what_the_stage_reads():
    params = load_params(REPO / "params.yaml")
    base = stages.stage_inputs(params, "data-v1")
    assert stages.stage_inputs(load_params(REPO / "params.yaml", {"train.lora_rank": 8}), "data-v1") == base
    new_data = stages.stage_inputs(params, "data-v2")
    assert all(new_data[stage] != base[stage] for stage in base)
    new_seed = stages.stage_inputs(load_params(REPO / "params.yaml", {"model.seed": 1}), "data-v1")
    assert new_seed["preprocess"] == base["preprocess"] and new_seed["model"] != base["model"]
    assert new_seed["tokenize"] != base["tokenize"]
    new_length = stages.stage_inputs(load_params(REPO / "params.yaml", {"train.sequence_length": 64}), "data-v1")
    assert [new_length[s] == base[s] for s in ("preprocess", "model", "tokenize")] == [True, True, False]


def test_data_stage_table_matches_dvc_yaml():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    for name, stage in stages.DATA_STAGES.items():
        declared_code = {dep[:-3].replace("/", ".") for dep in dvc[name]["deps"] if dep.endswith(".py")}
        assert declared_code == set(stage.code), name
        assert dvc[name]["params"] == list(stage.params), name


def test_outputs_digest_sees_missing_and_changed_files(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "a.txt").write_text("one")
    before = stages.outputs_digest([folder])
    (folder / "a.txt").write_text("two")
    changed = stages.outputs_digest([folder])
    shutil.rmtree(folder)
    assert len({before, changed, stages.outputs_digest([folder])}) == 3


def test_flow_parameters_become_params_overrides():
    assert overrides(None, None, None) == {}
    assert overrides("data/raw", 3, 4) == {"data.raw_dir": "data/raw", "train.epochs": 3, "train.lora_rank": 4}


def test_prefect_yaml_deploys_the_flow_weekly_in_seoul():
    config = yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))
    (deployment,) = [d for d in config["deployments"] if d["name"] == "default"]
    assert deployment["entrypoint"] == "flows/train_lora.py:train_lora"
    assert deployment["work_pool"]["name"] == "maeum-process"
    assert [(s["cron"], s["timezone"]) for s in deployment["schedules"]] == [(WEEKLY_CRON, TIMEZONE)]
    assert set(deployment["parameters"]) <= {"params_file", "data_dir", "epochs", "lora_rank", "force"}


def test_retry_conditions_skip_errors_a_retry_cannot_fix():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE
    from prefect.states import Failed

    from maeum.gemma import WeightsUnavailable

    def failed(error):
        return Failed(data=error)

    assert stages.retry_unless_unavailable(None, None, failed(ConnectionError("reset by peer")))
    assert not stages.retry_unless_unavailable(None, None, failed(WeightsUnavailable("no Kaggle credentials")))
    assert stages.retry_if_transient(None, None, failed(MlflowException("database is locked", TEMPORARILY_UNAVAILABLE)))
    assert not stages.retry_if_transient(None, None, failed(MlflowException("no such model", RESOURCE_DOES_NOT_EXIST)))
