"""Shared fixtures. Tests needing a GPU or the network are skipped unless asked for."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import pytest

from maeum.runtime import TELEMETRY_OFF

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "data" / "sample"

for _name, _value in TELEMETRY_OFF.items():
    os.environ.setdefault(_name, _value)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_addoption(parser):
    parser.addoption("--run-gpu", action="store_true", help="run tests marked gpu")
    parser.addoption("--run-network", action="store_true", help="run tests marked network (Kaggle access)")


def pytest_collection_modifyitems(config, items):
    for marker, option in (("gpu", "--run-gpu"), ("network", "--run-network")):
        if config.getoption(option):
            continue
        skip = pytest.mark.skip(reason=f"needs {option}")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def sample_records() -> dict[str, list[dict]]:
    return {
        name: json.loads((SAMPLE_DIR / f"{name}.json").read_text(encoding="utf-8"))
        for name in ("Training", "Validation")
    }


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    """A real, empty MLflow store in a temporary folder, for this test only."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # artifacts land in tmp_path/mlruns
    return uri


def copy_repo(destination: Path) -> Path:
    """A copy of the tracked project files (no run state), as a fresh clone would have."""
    ignore = shutil.ignore_patterns(".venv", ".git", "mlruns", "mlflow.db", "models", "reports", "checkpoints",
                                    "processed", "tokenized", "__pycache__", "*.egg-info", ".pytest_cache", "raw",
                                    ".prefect", ".mlflow-server")  # fmt: skip
    shutil.copytree(REPO, destination, ignore=ignore)
    return destination


@contextlib.contextmanager
def working_dir(path: Path, env: dict[str, str]):
    """`path` as working directory with `env` set; both restored afterwards (for session fixtures)."""
    old_cwd, old_env = Path.cwd(), {k: os.environ.get(k) for k in env}
    os.chdir(path)
    os.environ.update(env)
    try:
        yield path
    finally:
        os.chdir(old_cwd)
        for key, value in old_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
