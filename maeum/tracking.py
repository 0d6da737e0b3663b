"""MLflow conventions: where runs go, what every run carries, and how they are named.

Default store: `sqlite:///mlflow.db` with artifacts under `./mlruns/` (both git-ignored);
`MLFLOW_TRACKING_URI` points the same code at a shared server.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from maeum.config import Params

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_ARTIFACT_ROOT = "mlruns"
MLFLOW_PARAM_LIMIT = 100  # MLflow's log_params batch limit

TAG_DATA_VERSION = "maeum.data_version"
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_PRESET = "maeum.preset"
TAG_PARAMS_HASH = "maeum.params_hash"
TAG_PREFECT_FLOW_RUN = "prefect.flow_run_id"
FLOW_RUN_ENV = "PREFECT__FLOW_RUN_ID"  # set in a flow run's processes (and its DVC stages)
TAG_OUTPUT_ADAPTER = "maeum.adapter"  # the adapter file a training run chose (last, or best epoch)
ADAPTER_ARTIFACTS = "lora"  # artifact folder of each epoch's .lora.h5 in a training run
# The training settings a person compares runs by: tags in the runs table (every param is also a run param).
TRAINING_SETTINGS = ("lora_rank", "lora_targets", "learning_rate", "lr_schedule", "warmup_steps", "epochs", "batch_size",
                     "gradient_accumulation_steps", "gradient_clip_norm", "early_stopping_patience")  # fmt: skip


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


def setup(experiment: str) -> str:
    """Points MLflow at the configured store and experiment; returns the experiment id.

    A new experiment on the local sqlite store keeps its artifacts in `./mlruns` (not MLflow's
    default per-store location) so `mlruns/` is the one folder to back up or ignore.
    """
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    existing = mlflow.get_experiment_by_name(experiment)
    if existing is not None:
        experiment_id = existing.experiment_id
    elif uri.startswith("sqlite:"):
        experiment_id = mlflow.create_experiment(experiment, artifact_location=Path(DEFAULT_ARTIFACT_ROOT).resolve().as_uri())
    else:
        experiment_id = mlflow.create_experiment(experiment)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_name(params: Params, data_version: str) -> str:
    """A name a person can read in the runs table: preset, LoRA, schedule, batch, data, time."""
    train = params.train
    stamp = time.strftime("%m%d-%H%M%S")
    accumulation = f"x{train.gradient_accumulation_steps}" if train.gradient_accumulation_steps > 1 else ""
    return (f"{params.model.preset}-r{train.lora_rank}{'all' if train.lora_targets == 'all' else ''}-e{train.epochs}-"
            f"lr{train.learning_rate:g}{'' if train.lr_schedule == 'constant' else train.lr_schedule}-"
            f"b{train.batch_size}{accumulation}-data{data_version[:7]}-{stamp}")  # fmt: skip


MODEL_SECTIONS = ("data.", "preprocess.", "model.", "tokenize.", "train.")  # what a trained adapter depends on


def params_hash(params: Params) -> str:
    """Hash of every parameter that changes the trained model (paths excluded): a changed setting retrains."""
    import hashlib
    import json

    relevant = {k: v for k, v in params.as_flat_dict().items()
                if k.startswith(MODEL_SECTIONS) and not k.endswith(("_dir", "_file"))}  # fmt: skip
    return hashlib.md5(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def run_tags(params: Params, data_version: str) -> dict[str, str]:
    tags = {
        TAG_DATA_VERSION: data_version,
        TAG_PRESET: params.model.preset,
        TAG_PARAMS_HASH: params_hash(params),
        **{f"maeum.train.{key}": str(getattr(params.train, key)) for key in TRAINING_SETTINGS},
    }
    commit = git_commit()
    if commit:
        tags[TAG_GIT_COMMIT] = commit
    flow_run = os.environ.get(FLOW_RUN_ENV)
    if flow_run:
        tags[TAG_PREFECT_FLOW_RUN] = flow_run
    return tags


def log_all_params(params: Params) -> None:
    import mlflow

    flat = {k: (v if v is not None else "") for k, v in params.as_flat_dict().items()}
    items = sorted(flat.items())
    for start in range(0, len(items), MLFLOW_PARAM_LIMIT):
        mlflow.log_params(dict(items[start : start + MLFLOW_PARAM_LIMIT]))


def plain_metrics(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
