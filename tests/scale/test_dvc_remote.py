"""A DVC remote carries the raw data and every stage output to a fresh clone, which then has the
same pipeline state and reproduces the same metrics.

The pipeline runs once, in the first repository (see conftest). The clone pulls, finds the
pipeline up to date, and reruns only `evaluate` (forced) on the pulled model and data: the
metrics it writes are the first repository's. Rerunning every stage in the clone as well would
double the time of this test and show less (train is not bit-reproducible across processes on
every platform; evaluate's greedy decoding on fixed weights is).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.scale.conftest import sh

pytestmark = pytest.mark.slow


def md5_tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pushed(pipeline_repo, tmp_path_factory):
    repo, env = pipeline_repo
    remote = tmp_path_factory.mktemp("dvc-remote")
    sh(["dvc", "remote", "add", "--default", "storage", str(remote)], repo, env)
    sh(["git", "commit", "-qam", "DVC remote"], repo, env)
    sh(["dvc", "push"], repo, env)
    return repo, env, remote


def test_raw_data_is_tracked_by_dvc_not_git(pushed):
    repo, env, _ = pushed
    tracked = sh(["git", "ls-files", "data/raw", "data/raw.dvc"], repo, env).stdout.split()
    assert tracked == ["data/raw.dvc"]


def test_push_stores_data_and_outputs_in_the_remote(pushed):
    repo, env, remote = pushed
    assert sh(["dvc", "status", "--cloud"], repo, env).stdout.strip().endswith("Cache and remote 'storage' are in sync.")
    assert len(list((remote / "files" / "md5").rglob("*"))) > 20


def test_clone_pulls_the_same_state_and_reproduces_the_metrics(pushed, tmp_path):
    repo, env, _ = pushed
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    assert not (clone / "data" / "raw").exists() and not (clone / "models").exists()

    sh(["dvc", "pull"], clone, env)
    for folder in ("data/raw", "data/tokenized", "models/base", "models/lora"):
        assert md5_tree(clone / folder) == md5_tree(repo / folder), folder
    assert "Data and pipelines are up to date." in sh(["dvc", "status"], clone, env).stdout
    repro = sh(["dvc", "repro"], clone, env).stdout
    assert "Running stage" not in repro and "up to date" in repro

    # evaluate logs into the training's MLflow run, so the clone shares the store (a team server does this).
    sh(["dvc", "repro", "--force", "--single-item", "evaluate"], clone, env)
    metrics = {r: json.loads(sh(["dvc", "metrics", "show", "--json"], r, env).stdout) for r in (repo, clone)}
    assert metrics[clone] == metrics[repo]
    assert metrics[clone][""]["data"]["reports/evaluate/metrics.json"]["data"]["val_loss_tuned"] > 0  # "" = the workspace
