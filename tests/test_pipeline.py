"""`dvc repro` end to end in a temporary copy of the repository, as a fresh clone would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import copy_repo

pytestmark = pytest.mark.slow


def sh(command: list[str], cwd: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("clone") / "maeum")
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}  # fmt: skip
    env.pop("MLFLOW_TRACKING_URI", None)
    sh(["git", "init", "-q"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "clone"], repo, env)
    return repo, env


def test_dvc_repro_runs_all_stages_and_then_is_a_no_op(clone):
    repo, env = clone
    started = time.perf_counter()
    first = sh(["dvc", "repro"], repo, env)
    first_seconds = time.perf_counter() - started
    for stage in ("validate", "preprocess", "model", "tokenize", "train", "evaluate"):
        assert f"Running stage '{stage}'" in first.stdout
    metrics = json.loads((repo / "reports/evaluate/metrics.json").read_text())
    assert metrics["val_loss_tuned"] < metrics["val_loss_base"]
    assert sorted(p.name for p in (repo / "models/lora").glob("*.lora.h5")) == ["maeum_2_epoch1.lora.h5", "maeum_2_epoch2.lora.h5"]
    assert (repo / "mlflow.db").exists() and (repo / "mlruns").is_dir()

    started = time.perf_counter()
    second = sh(["dvc", "repro"], repo, env)
    noop_seconds = time.perf_counter() - started
    assert "Running stage" not in second.stdout
    assert "up to date" in second.stdout
    print(f"dvc repro: {first_seconds:.1f} s; no-op dvc repro: {noop_seconds:.1f} s")


def test_dvc_exp_run_with_a_different_rank(clone):
    repo, env = clone
    if not (repo / "models/base/base.json").exists():
        sh(["dvc", "repro"], repo, env)
    done = sh(["dvc", "exp", "run", "-S", "train.lora_rank=4"], repo, env)
    assert "Running stage 'train'" in done.stdout and "Running stage 'validate'" not in done.stdout
    assert sorted(p.name for p in (repo / "models/lora").glob("*.lora.h5")) == ["maeum_4_epoch1.lora.h5", "maeum_4_epoch2.lora.h5"]
    run = json.loads((repo / "models/lora/run.json").read_text())
    assert run["lora_rank"] == 4
