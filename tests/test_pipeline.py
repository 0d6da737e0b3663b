"""`dvc repro` end to end in a fresh clone, as a newcomer's `make run` runs it: the default data and tiny model.

The checks are the ones a newcomer's first look makes: every stage runs, the output is readable
(no CUDA or oneDNN notices on a CPU machine, progress lines in the log), the tuned model clearly
beats its base and its replies are whole, MLflow has the step-level curve, a second `dvc repro`
does nothing, evaluate runs on a clone whose MLflow store is empty, and an experiment with another
LoRA rank reruns only training and evaluation.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from maeum.config import load_params
from tests.conftest import GIT_IDENTITY, copy_repo

pytestmark = pytest.mark.slow

CPU_NOTICES = ("cuInit", "cudart_stub", "oneDNN custom operations", "Could not find cuda drivers")


def sh(command: list[str], cwd: Path, env: dict, timeout: int = 1800) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("clone") / "maeum")
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", **GIT_IDENTITY}  # fmt: skip
    for name in ("MLFLOW_TRACKING_URI", "KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL"):
        env.pop(name, None)  # as a newcomer's shell: the project sets what it needs
    return repo, env


@pytest.fixture(scope="module")
def first_repro(clone):
    repo, env = clone
    return sh(["dvc", "repro"], repo, env)


def test_dvc_repro_runs_every_stage_with_readable_output(first_repro, clone):
    repo, _ = clone
    output = first_repro.stdout + first_repro.stderr
    for stage in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]:
        assert f"Running stage '{stage}'" in output, stage
    assert not [notice for notice in CPU_NOTICES if notice in output]
    assert "train epoch 1/" in output and "tok/s" in output and "ETA" in output  # progress lines under DVC
    assert (repo / "mlflow.db").exists() and (repo / "mlruns").is_dir()


def test_the_default_model_visibly_learns(first_repro, clone):
    repo, _ = clone
    params = load_params(repo / "params.yaml")
    metrics = {**json.loads((repo / params.evaluate.metrics_file).read_text()),
               **json.loads((repo / params.evaluate.generation_file).read_text())}  # fmt: skip
    assert metrics["val_bpc_tuned"] <= 0.9 * metrics["val_bpc_base"]
    assert metrics["val_loss_tuned"] < metrics["val_loss_base"]
    assert metrics["chrf_tuned"] > metrics["chrf_base"]
    assert metrics["emotion_reflection_tuned"] > metrics["emotion_reflection_base"]
    assert metrics["end_of_turn_rate_tuned"] >= 0.8
    assert metrics["mid_word_start_rate_tuned"] == 0 and metrics["replacement_char_rate_tuned"] == 0
    report = (repo / params.evaluate.report_file).read_text()
    assert "\ufffd" not in report


def test_mlflow_holds_the_step_level_training_curve(first_repro, clone):
    import mlflow

    repo, _ = clone
    params = load_params(repo / "params.yaml")
    run_id = json.loads((repo / params.train.run_file).read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    assert len(client.get_metric_history(run_id, "train_loss")) >= 20
    assert client.get_run(run_id).data.metrics["val_bpc_tuned"] > 0


def test_a_second_repro_is_a_no_op(first_repro, clone):
    repo, env = clone
    second = sh(["dvc", "repro"], repo, env)
    assert "Running stage" not in second.stdout and "up to date" in second.stdout


def test_evaluate_runs_on_a_clone_whose_mlflow_store_is_empty(first_repro, clone):
    repo, env = clone
    shutil.move(repo / "mlflow.db", repo / "mlflow.db.kept")
    try:
        done = sh(["dvc", "repro", "--force", "--single-item", "evaluate"], repo, env)  # evaluate alone: no new training run
        output = done.stdout + done.stderr
        assert "is not in the MLflow store" in output and "new run" in output
    finally:
        (repo / "mlflow.db").unlink(missing_ok=True)
        shutil.move(repo / "mlflow.db.kept", repo / "mlflow.db")


def test_an_experiment_with_another_rank_reruns_only_training(first_repro, clone):
    repo, env = clone
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "first run"], repo, env)
    done = sh(["dvc", "exp", "run", "-S", "train.tiny.lora_rank=4"], repo, env)
    assert "Running stage 'train'" in done.stdout and "Running stage 'evaluate'" in done.stdout
    for stage in ("validate", "preprocess", "model", "tokenize", "safety", "emotion"):
        assert f"Running stage '{stage}'" not in done.stdout, stage
    run = json.loads((repo / load_params(repo / "params.yaml").train.run_file).read_text())
    assert run["lora_rank"] == 4
