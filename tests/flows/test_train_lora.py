"""The train-lora flow, run for real through DVC: train, skip, rerun what dvc.yaml says, compare on the same data.

The runs build on each other (one git + DVC clone, one MLflow registry), so each is a session
fixture that depends on the one before it; the tests look at the results.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from flows import stages
from flows.train_lora import TIMEZONE, WEEKLY_CRON, train_lora
from maeum import registry
from maeum.config import load_params
from tests.conftest import REPO
from tests.flows.conftest import commit, set_params, working_in

MODEL_NAME = "maeum-lora"
MAEUM = Path(sys.executable).parent / "maeum"


# === Helpers: what the Prefect server and the MLflow store recorded ===


def run_flow(project: Path, **parameters):
    with working_in(project):
        state = train_lora(**parameters, return_state=True)
        return state, state.result(raise_on_failure=False)


def task_states(state) -> dict[str, list[str]]:
    """Task run name -> state names in this flow run ("Completed", "Failed"); stage tasks are named after their stage."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    names: dict[str, list[str]] = {}
    for run in sorted(runs, key=lambda r: r.expected_start_time):
        name = run.name if run.task_key.startswith("run_stage") or "-" not in run.name else run.name.rsplit("-", 1)[0]
        names.setdefault(name, []).append(run.state.name)
    return names


def ran_stages(outcome: dict) -> set[str]:
    return {s["stage"] for s in outcome.get("stages", []) if s["ran"]}


def summary_artifact(state) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[stages.SUMMARY_ARTIFACT_KEY]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))  # fmt: skip
    assert len(artifacts) == 1
    return artifacts[0].data


def champion_version() -> str | None:
    champion = registry.get_champion(MODEL_NAME)
    return str(champion.version) if champion else None


def maeum(project: Path, *args: str) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    return subprocess.run([str(MAEUM), *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)


# === The runs, in order ===


@pytest.fixture(scope="session")
def first_run(flow_env):
    return run_flow(flow_env)


@pytest.fixture(scope="session")
def unchanged_run(first_run, flow_env):
    return run_flow(flow_env)


@pytest.fixture(scope="session")
def new_dependency_run(unchanged_run, flow_env):
    """A file added to the tokenize stage's deps in dvc.yaml, and nothing else: forced, so the flow looks at DVC."""
    (flow_env / "notes").mkdir()
    (flow_env / "notes" / "tokenize.txt").write_text("a reviewed note the tokenize stage now depends on\n")
    dvc = yaml.safe_load((flow_env / "dvc.yaml").read_text())
    dvc["stages"]["tokenize"]["deps"].append("notes/tokenize.txt")
    (flow_env / "dvc.yaml").write_text(yaml.safe_dump(dvc, allow_unicode=True, sort_keys=False))
    commit(flow_env, "tokenize depends on a note")
    return run_flow(flow_env, force=True)


@pytest.fixture(scope="session")
def harder_validation_run(new_dependency_run, flow_env):
    """The same training file; a validation file of other, longer dialogues: a harder split for every model."""
    sample = json.loads((REPO / "data" / "sample" / "Validation.json").read_text(encoding="utf-8"))
    longest = sorted(sample, key=lambda r: -sum(len(v) for v in r["talk"]["content"].values()))[:12]
    (flow_env / "corpus" / "Validation.json").write_text(json.dumps(longest, ensure_ascii=False), encoding="utf-8")
    commit(flow_env, "a harder validation split")
    with working_in(flow_env):
        stored_champion = registry.client().get_model_version(MODEL_NAME, champion_version())
    return (*run_flow(flow_env), float(stored_champion.tags["maeum.val_bpc"]), str(stored_champion.version))


@pytest.fixture(scope="session")
def manual_run(harder_validation_run, flow_env):
    """promotion.mode: manual, a longer training: a passing model waits as challenger."""
    set_params(flow_env / "params.yaml", {"promotion.mode": "manual", "train.tiny": {"epochs": 3, "learning_rate": 3.0e-3,
                                                                                     "lora_rank": 4}})  # fmt: skip
    commit(flow_env, "manual promotion, longer training")
    with working_in(flow_env):
        before = champion_version()
    return (*run_flow(flow_env), before)


@pytest.fixture(scope="session")
def broken_data_run(manual_run, flow_env):
    text = (flow_env / "corpus" / "Training.json").read_text(encoding="utf-8")
    (flow_env / "corpus" / "Training.json").write_text(text[: len(text) // 2], encoding="utf-8")  # cut mid-record
    with working_in(flow_env):
        store = registry.client()
        runs_before = len(store.search_runs([store.get_experiment_by_name("maeum-lora").experiment_id]))
        champion_before = champion_version()
    state, outcome = run_flow(flow_env)
    (flow_env / "corpus" / "Training.json").write_text(text, encoding="utf-8")
    return state, outcome, runs_before, champion_before


# === Flow behaviour ===


def test_first_run_runs_every_dvc_stage_registers_and_becomes_champion(first_run, in_project):
    state, outcome = first_run
    assert state.is_completed(), outcome
    assert outcome["status"] == "trained" and outcome["model_version"] == "1" and outcome["promoted"] is True
    assert champion_version() == "1"
    with working_in(in_project):
        graph = stages.pipeline_stages()
    assert set(graph) == set(yaml.safe_load((in_project / "dvc.yaml").read_text())["stages"])  # the graph is dvc.yaml's
    assert ran_stages(outcome) == set(graph)
    assert graph.index("validate") < graph.index("preprocess") < graph.index("tokenize") < graph.index("train") < graph.index("evaluate")
    assert (in_project / "dvc.lock").is_file()  # DVC itself ran them: its lock file records them


def test_training_run_links_mlflow_and_prefect_and_holds_the_model_card(first_run, in_project):
    state, outcome = first_run
    store = registry.client()
    run = store.get_run(outcome["run_id"])
    assert run.data.tags["prefect.flow_run_id"] == str(state.state_details.flow_run_id)
    assert run.data.tags[registry.TAG_PROMOTION] == "promoted"
    version = store.get_model_version(MODEL_NAME, "1")
    assert version.run_id == outcome["run_id"]  # the model was logged in the training run itself
    assert version.tags["maeum.data_version"] == outcome["data_version"]
    assert "## Promotion" in version.description and "no champion yet" in version.description
    assert "## Crisis screen" in version.description and "## Sample replies" in version.description
    markdown = summary_artifact(state)
    assert outcome["run_id"] in markdown and "first model" in markdown


def test_unchanged_data_and_params_are_skipped(unchanged_run, first_run):
    state, outcome = unchanged_run
    assert state.is_completed()
    assert outcome["status"] == "skipped" and outcome["reason"] == "nothing changed"
    assert outcome["run_id"] == first_run[1]["run_id"] and outcome["champion_version"] == "1"
    assert set(task_states(state)) == {"fingerprint", "find-champion", "report"}


def test_a_dependency_added_to_dvc_yaml_reruns_that_stage_and_only_what_follows(new_dependency_run):
    state, outcome = new_dependency_run
    assert state.is_completed(), outcome
    assert ran_stages(outcome) == {"tokenize", "train", "evaluate"}  # not validate, preprocess, model, safety, emotion
    assert outcome["model_version"] == "2"


def test_the_champion_is_rescored_on_the_challengers_validation_data(harder_validation_run, in_project):
    state, outcome, stored_bpc, stored_version = harder_validation_run
    assert state.is_completed(), outcome
    decision = outcome["promotion"]
    assert decision["champion_version"] == stored_version
    run = registry.client().get_run(outcome["run_id"])
    rescored = run.data.metrics[registry.METRIC_CHAMPION_BPC]
    assert decision["champion_bpc"] == pytest.approx(rescored)
    assert rescored > stored_bpc  # the same champion, on the harder split: its stored number would flatter it
    assert run.data.metrics["champion_rescore_seconds"] > 0
    assert run.data.tags["maeum.champion_data_version"] != outcome["data_version"]
    names = [check["name"] for check in decision["checks"]]
    assert names == ["beats its base", "beats the champion", "keeps the crisis screen", "keeps its replies"]
    assert "re-scored on this data" in decision["checks"][1]["detail"] and "bootstrap" in decision["checks"][1]["detail"]
    assert f"{rescored:.4f}" in summary_artifact(state)


def test_manual_mode_nominates_a_challenger_and_people_promote_and_roll_back(manual_run, in_project):
    state, outcome, before = manual_run
    assert state.is_completed(), outcome
    version = outcome["model_version"]
    if outcome["promotion_outcome"] != "challenger":
        pytest.fail(f"the longer training did not pass the promotion checks: {outcome['promotion']['reason']}")
    assert champion_version() == before
    assert str(registry.get_alias(MODEL_NAME, registry.CHALLENGER_ALIAS).version) == version

    promoted = maeum(in_project, "registry", "promote", version, "--by", "counsellor-kim", "--reason", "reviewed replies")
    assert promoted.returncode == 0, promoted.stderr
    assert champion_version() == version and registry.get_alias(MODEL_NAME, registry.CHALLENGER_ALIAS) is None
    rolled_back = maeum(in_project, "registry", "rollback", "--by", "counsellor-kim")
    assert rolled_back.returncode == 0, rolled_back.stderr
    assert champion_version() == before
    history = maeum(in_project, "registry", "history")
    lines = history.stdout.splitlines()
    assert any("promote" in line and "counsellor-kim" in line and "reviewed replies" in line for line in lines)
    assert any("rollback" in line and f"v{version}" in line for line in lines)
    assert any("nominate" in line and "challenger" in line for line in lines)
    unknown = maeum(in_project, "registry", "promote", "999")
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1 and "999" in unknown.stderr


def test_invalid_data_fails_before_training_and_keeps_the_champion(broken_data_run, in_project):
    state, outcome, runs_before, champion_before = broken_data_run
    assert state.is_failed()
    assert "Training.json" in str(outcome)  # the validate stage names the file
    states = task_states(state)
    assert states["validate"] == ["Failed"] and "train" not in states
    assert champion_version() == champion_before
    store = registry.client()
    assert len(store.search_runs([store.get_experiment_by_name("maeum-lora").experiment_id])) == runs_before


def test_the_champion_answers_through_mlflow_pyfunc_with_its_own_screen(manual_run, in_project):
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    replies = model.predict(pd.DataFrame({
        "message": ["요즘 회사 일 때문에 너무 힘들어.", "친구가 유서 같은 걸 남기고 연락이 안 돼", "오늘 밤에 약 다 먹고 죽을 거야"],
        "history": [None, json.dumps([["user", "안녕"], ["model", "안녕하세요. 무슨 일 있으세요?"]], ensure_ascii=False), None],
    }))  # fmt: skip
    responses = yaml.safe_load((in_project / "data" / "safety" / "responses.yaml").read_text(encoding="utf-8"))
    assert len(replies) == 3 and all(isinstance(reply, str) for reply in replies)
    assert replies[1] == responses["third_person_crisis"].strip() and "112" in replies[1]
    assert replies[2] == responses["crisis"].strip()  # screened as in chat: the model is not asked
    shipped = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{MODEL_NAME}@champion"))
    assert (shipped / "code" / "maeum" / "safety").is_dir() and not (shipped / "code" / "tasks").exists()


# === Pieces of the flow that need no server ===


def test_stage_order_and_force_come_from_dvc_yaml():
    with working_in(REPO):
        order = stages.pipeline_stages()
        forced = stages.downstream_of("train")
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    assert sorted(order) == sorted(dvc) and forced == ["evaluate", "train"]


def test_prefect_yaml_deploys_the_flow_weekly_in_seoul():
    config = yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))
    (deployment,) = [d for d in config["deployments"] if d["name"] == "default"]
    assert deployment["entrypoint"] == "flows/train_lora.py:train_lora"
    assert deployment["work_pool"]["name"] == "maeum-process"
    assert [(s["cron"], s["timezone"]) for s in deployment["schedules"]] == [(WEEKLY_CRON, TIMEZONE)]
    assert set(deployment["parameters"]) <= {"force"}


def test_retry_conditions_skip_errors_a_retry_cannot_fix():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE
    from prefect.states import Failed

    assert stages.retry_if_transient(None, None, Failed(data=MlflowException("database is locked", TEMPORARILY_UNAVAILABLE)))
    assert not stages.retry_if_transient(None, None, Failed(data=MlflowException("no such model", RESOURCE_DOES_NOT_EXIST)))
    assert not stages.retry_if_transient(None, None, Failed(data=stages.StageFailed("validate failed")))
