"""Helpers for scripts/mlflow_screenshots.sh: a demo MLflow store, and the ids the UI URLs need.

    python scripts/mlflow_demo_runs.py demo WORK_DIR   # clone the project into WORK_DIR/project, run train-lora twice
    python scripts/mlflow_demo_runs.py ids STORE_DIR    # "<experiment id> <run id> <run id>" of the two latest runs

The demo runs are real `train-lora` flow runs (ephemeral Prefect server, tiny preset, sample
corpus, the stages through DVC in a git clone of the committed project) with the tiny profile's
LoRA rank set to 2 and then 4, so the runs table and the compare view have something to compare.
Not part of the test suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO_RANKS = (2, 4)
EXPERIMENT = "maeum-lora"
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "demo", "GIT_AUTHOR_EMAIL": "demo@localhost",
                "GIT_COMMITTER_NAME": "demo", "GIT_COMMITTER_EMAIL": "demo@localhost"}  # fmt: skip


def set_tiny_rank(project: Path, rank: int) -> None:
    """Sets `train.tiny.lora_rank` in the clone's params.yaml and commits it (the run records the commit)."""
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    params["train"].setdefault("tiny", {})["lora_rank"] = rank
    path.write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
    env = {**os.environ, **GIT_IDENTITY}
    subprocess.run(["git", "commit", "-qam", f"demo: tiny LoRA rank {rank}"], cwd=project, env=env, check=True)


def demo(work: Path) -> None:
    project = work / "project"
    subprocess.run(["git", "clone", "-q", str(REPO), str(project)], check=True)
    os.chdir(project)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    os.environ["PREFECT_HOME"] = str(work / ".prefect")  # the ephemeral server's database stays in WORK_DIR
    os.environ.pop("PREFECT_API_URL", None)
    sys.path.insert(0, str(project))
    from maeum.runtime import prepare_process

    prepare_process()
    from flows.train_lora import train_lora

    for rank in DEMO_RANKS:
        set_tiny_rank(project, rank)
        outcome = train_lora()
        print(f"rank {rank}: MLflow run {outcome['run_id']}, {outcome['reason']}", flush=True)


def ids(store: Path) -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        sys.exit(f"{store}: no experiment {EXPERIMENT!r}")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=2)
    if len(runs) < 2:
        sys.exit(f"{store}: experiment {EXPERIMENT!r} has {len(runs)} run(s); the compare view needs 2")
    print(experiment.experiment_id, *(run.info.run_id for run in runs))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("demo", "ids"):
        sys.exit(__doc__)
    {"demo": demo, "ids": ids}[sys.argv[1]](Path(sys.argv[2]).resolve())
