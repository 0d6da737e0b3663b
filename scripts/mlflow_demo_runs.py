"""Helpers for scripts/mlflow_screenshots.sh: a demo MLflow store, and the ids the UI URLs need.

    python scripts/mlflow_demo_runs.py demo WORK_DIR   # copy the project into WORK_DIR/project, run train-lora twice
    python scripts/mlflow_demo_runs.py ids STORE_DIR    # "<experiment id> <run id> <run id>" of the two latest runs

The demo runs are real `train-lora` flow runs (ephemeral Prefect server, tiny preset, sample
corpus, 1 epoch) with LoRA rank 2 and 4, so the runs table and the compare view have
something to compare. Not part of the test suite.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN_STATE = ("mlruns", "mlflow.db", "models", "reports", "checkpoints", "processed", "tokenized", "raw")
NOT_PROJECT = (".venv", ".git", "__pycache__", "*.egg-info", ".pytest_cache", ".prefect", ".ruff_cache")
DEMO_RANKS = (2, 4)
DEMO_EPOCHS = 1
EXPERIMENT = "maeum-lora"


def demo(work: Path) -> None:
    project = work / "project"
    shutil.copytree(REPO, project, ignore=shutil.ignore_patterns(*RUN_STATE, *NOT_PROJECT))
    os.chdir(project)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    os.environ["PREFECT_HOME"] = str(work / ".prefect")  # the ephemeral server's database stays in WORK_DIR
    os.environ.pop("PREFECT_API_URL", None)
    from maeum.runtime import prepare_process

    prepare_process()
    from flows.train_lora import train_lora

    for rank in DEMO_RANKS:
        outcome = train_lora(epochs=DEMO_EPOCHS, lora_rank=rank, force=True)
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
