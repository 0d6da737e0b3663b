"""One Prefect test server, one copy of the project and one MLflow store for the flow tests.

The flow runs for real, in-process, against `prefect_test_harness` (a local server on a
temporary sqlite database), in a copy of the repository whose params.yaml is shrunk so a
training run takes seconds: a slice of the sample corpus, an untrained tiny base, one epoch,
fixed padding without XLA (compiling costs more than training at this size).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import SAMPLE_DIR, copy_repo, working_dir

CORPUS_SLICE = {"Training": 60, "Validation": 12}  # dialogues: ~140 training examples
FAST_PARAMS = {
    "data.raw_dir": "corpus",
    "model.tiny.pretrain_epochs": 0,  # an untrained base: LoRA's effect on the loss shows after a few steps
    "train.epochs": 1,
    "train.learning_rate": 1.0e-3,
    "train.sequence_length": 128,
    "train.padding": "fixed",  # one compiled shape
    "train.jit_compile": False,  # XLA compilation costs more than this model's whole training
    "train.sample_max_new_tokens": 8,
    "evaluate.num_generations": 2,
    "evaluate.max_new_tokens": 8,
}


def write_params(path: Path, source: Path, overrides: dict) -> Path:
    """A copy of `source` (the project's params.yaml) with dotted overrides applied."""
    raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def working_in(project: Path):
    """The project copy as working directory, with its own MLflow store; both restored afterwards."""
    return working_dir(project, {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"})


@pytest.fixture(scope="session")
def project(tmp_path_factory) -> Path:
    """A fresh copy of the project with a small corpus slice in `corpus/` and fast params."""
    root = copy_repo(tmp_path_factory.mktemp("flow") / "project")
    (root / "corpus").mkdir()
    for name, count in CORPUS_SLICE.items():
        records = json.loads((SAMPLE_DIR / f"{name}.json").read_text(encoding="utf-8"))[:count]
        (root / "corpus" / f"{name}.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    write_params(root / "params.yaml", root / "params.yaml", FAST_PARAMS)
    return root


@pytest.fixture(scope="session")
def flow_env(project, tmp_path_factory):
    """The Prefect test server (one per session, ~9 s to start) and a private result store for its caches."""
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
