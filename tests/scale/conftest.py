"""One cheap pipeline run in a git + DVC copy of the project, shared by the DVC remote, sweep and
tracking-server tests.

The copy tracks its raw corpus with DVC (`dvc add data/raw`), as a team with the real AI Hub
data would, and logs to an MLflow store given by an absolute MLFLOW_TRACKING_URI, so that
experiments DVC runs in its own temporary folders (`dvc queue`) log to the same store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, SAMPLE_DIR, copy_repo
from tests.model.conftest import write_safety_slice

# Small enough for the time budget, large enough that every stage does its real work.
RAW_DIALOGUES = {"Training.json": 120, "Validation.json": 30}  # of the sample's 480 / 96
CHEAP_PARAMS = {
    "data.raw_dir": "data/raw",
    "safety.train_file": "data/safety_slice.tsv",  # the screen trains in seconds on every 8th labelled message
    "train.tiny": {},  # the recipe's train section, so sweeps over train.lora_rank change the trained model
    "model.tiny.pretrain_epochs": 0,  # a random base: LoRA still has something to learn
    "train.epochs": 1,
    "train.sequence_length": 128,
    "train.bucket_boundaries": [128],  # one batch shape: each stage compiles its step once
    "train.sample_max_new_tokens": 8,
    "evaluate.num_generations": 2,
    "evaluate.max_new_tokens": 8,
}
def sh(command: list[str], cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def set_params(path: Path, dotted: dict) -> None:
    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = params
        for name in parents:
            node = node[name]
        node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True), encoding="utf-8")


def tool_env(repo: Path) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org",
           "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"}  # fmt: skip
    env.pop("KERAS_BACKEND", None)  # stages pick theirs from params.yaml
    return env


@pytest.fixture(scope="session")
def pipeline_repo(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(repo, env) after `dvc add data/raw`, one `dvc repro` and a commit of everything, dvc.lock included."""
    repo = copy_repo(tmp_path_factory.mktemp("scale") / "maeum")
    env = tool_env(repo)
    raw = repo / "data" / "raw"
    raw.mkdir(parents=True)
    for name, count in RAW_DIALOGUES.items():
        records = json.loads((SAMPLE_DIR / name).read_text(encoding="utf-8"))[:count]
        (raw / name).write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    write_safety_slice(REPO / "data" / "safety" / "train.tsv", repo / "data" / "safety_slice.tsv", 8)
    set_params(repo / "params.yaml", CHEAP_PARAMS)
    sh(["dvc", "add", "data/raw"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "raw data tracked by DVC"], repo, env)
    started = time.perf_counter()
    sh(["dvc", "repro"], repo, env)
    print(f"pipeline_repo: dvc repro {time.perf_counter() - started:.1f} s")
    # Metrics and plots are DVC-cached outputs like the rest: dvc push/pull carries them.
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "pipeline run"], repo, env)
    return repo, env
