"""One Prefect test server, one fresh clone of the project and one MLflow store for the flow tests.

The flow runs for real, in-process, against `prefect_test_harness` (a local server on a temporary
sqlite database), in a git clone of the working tree whose params.yaml is shrunk so a training run
takes seconds: a slice of the sample corpus, an untrained tiny base, one epoch, one padded length
without XLA (compiling costs more than training at this size), a slice of the safety set. The flow
runs the stages through DVC there, exactly as it does in a user's repository.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import GIT_IDENTITY, REPO, SAMPLE_DIR, copy_repo, working_dir
from tests.model.conftest import write_safety_slice

CORPUS_SLICE = {"Training.json": 60, "Validation.json": 12}  # dialogues: ~140 training examples
FAST_PARAMS = {
    "data.raw_dir": "corpus",
    "model.tiny.pretrain_epochs": 0,  # an untrained base: LoRA's effect on the loss shows after a few steps
    "model.tiny.vocabulary_size": 800,
    "safety.train_file": "corpus/safety_train.tsv",
    "train.tiny": {"epochs": 1, "learning_rate": 1.0e-3, "lora_rank": 2},
    "train.sequence_length": 128,
    "train.padding": "fixed",  # one compiled shape
    "train.jit_compile": False,  # XLA compilation costs more than this model's whole training
    "train.sample_max_new_tokens": 8,
    "evaluate.num_generations": 4,
    "evaluate.max_new_tokens": 8,
    "promotion.bootstrap_samples": 200,
}


def set_params(path: Path, overrides: dict) -> Path:
    """Applies dotted overrides to a params.yaml in place."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def commit(project: Path, message: str) -> None:
    """Commits the project copy (DVC reads the working tree; the commit keeps `dvc` commands quiet)."""
    import os

    env = {**os.environ, **GIT_IDENTITY}
    subprocess.run(["git", "add", "-A"], cwd=project, env=env, check=True, capture_output=True)
    subprocess.run(["git", "commit", "-qm", message, "--allow-empty"], cwd=project, env=env, check=True, capture_output=True)


def working_in(project: Path):
    """The project copy as working directory, with its own MLflow store; both restored afterwards."""
    return working_dir(project, {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"})


@pytest.fixture(scope="session")
def project(tmp_path_factory) -> Path:
    """A fresh clone of the project with a small corpus slice in `corpus/` and fast params."""
    root = copy_repo(tmp_path_factory.mktemp("flow") / "project")
    (root / "corpus").mkdir()
    for name, count in CORPUS_SLICE.items():
        records = json.loads((SAMPLE_DIR / name).read_text(encoding="utf-8"))[:count]
        (root / "corpus" / name).write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    write_safety_slice(REPO / "data" / "safety" / "train.tsv", root / "corpus" / "safety_train.tsv", 8)
    set_params(root / "params.yaml", FAST_PARAMS)
    commit(root, "fast params and a corpus slice")
    return root


@pytest.fixture(scope="session")
def flow_env(project, tmp_path_factory):
    """The Prefect test server (one per session, ~9 s to start) and a private result store."""
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    results = tmp_path_factory.mktemp("prefect-results")
    with prefect_test_harness(), temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: results}):
        yield project


@pytest.fixture
def in_project(project):
    """For tests that read the flow runs' MLflow store."""
    with working_in(project):
        yield project
