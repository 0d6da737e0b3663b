"""A sweep over LoRA ranks through the DVC experiment queue, every point tracked in MLflow.

    dvc exp run --queue -S train.lora_rank=2,4,8     # one queued experiment per value
    dvc queue start -j 2                              # workers run them, each in its own temp folder

The repository's last run already trained rank 2, so that point comes back from DVC's run cache
without training again; ranks 4 and 8 train and evaluate. The queue's workers inherit this
process's environment: an absolute MLFLOW_TRACKING_URI puts all runs in one store.
"""

from __future__ import annotations

import json
import time

import mlflow
import pytest

from maeum.config import load_params
from tests.scale.conftest import sh

pytestmark = pytest.mark.slow

RANKS = [2, 4, 8]
WORKERS = 2
SWEEP_TIMEOUT = 600  # seconds


@pytest.fixture(scope="module")
def sweep(pipeline_repo):
    repo, env = pipeline_repo
    queued = sh(["dvc", "exp", "run", "--queue", "-S", f"train.lora_rank={','.join(map(str, RANKS))}"], repo, env).stdout
    assert queued.count("Queued experiment") == len(RANKS)
    started = time.perf_counter()
    sh(["dvc", "queue", "start", "-j", str(WORKERS)], repo, env)
    try:
        while "Queued" in (status := sh(["dvc", "queue", "status"], repo, env).stdout) or "Running" in status:
            assert time.perf_counter() - started < SWEEP_TIMEOUT, status
            time.sleep(2)
    finally:
        sh(["dvc", "queue", "stop", "--kill"], repo, env)
    seconds = time.perf_counter() - started
    print(f"sweep of {len(RANKS)} ranks with {WORKERS} queue workers: {seconds:.1f} s")
    assert "Failed" not in status, status  # `dvc queue logs <name>` in the repository shows why
    return repo, env, json.loads(sh(["dvc", "exp", "show", "--json"], repo, env).stdout)


def experiments(shown: list[dict]) -> list[dict]:
    """The queued experiments' data from `dvc exp show --json` (the workspace and baseline commit left out)."""
    found = []
    for commit in shown:
        for branch in commit.get("experiments") or []:
            found += [rev["data"] for rev in branch["revs"]]
    return found


def test_every_point_of_the_sweep_ran_with_its_rank(sweep):
    repo, _, shown = sweep
    files = load_params(repo / "params.yaml").evaluate
    exps = experiments(shown)
    ranks = sorted(e["params"]["params.yaml"]["data"]["train"]["lora_rank"] for e in exps)
    assert ranks == RANKS
    for e in exps:
        headline = e["metrics"][str(files.metrics_file)]["data"]
        generation = e["metrics"][str(files.generation_file)]["data"]
        assert headline["val_loss_tuned"] > 0 and generation["generations_tuned"] == 2


def test_every_rank_is_a_run_in_one_mlflow_store(sweep):
    repo, env, _ = sweep
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["maeum-lora"])
    assert sorted(runs["params.train.lora_rank"].astype(int)) == RANKS  # the rank-2 run is the repository's own
    assert runs["metrics.val_loss_tuned"].notna().all()  # evaluate logged into each training's run
    assert all(uri.startswith((repo / "mlruns").as_uri()) for uri in runs["artifact_uri"])  # not in the temp folders
