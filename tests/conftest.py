"""Shared fixtures. Tests needing a GPU or the network are skipped unless asked for."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from maeum.runtime import TELEMETRY_OFF

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "data" / "sample"
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "maeum tests", "GIT_AUTHOR_EMAIL": "tests@maeum.invalid",
                "GIT_COMMITTER_NAME": "maeum tests", "GIT_COMMITTER_EMAIL": "tests@maeum.invalid"}  # fmt: skip

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


def project_files() -> list[str]:
    """What a fresh clone of this working tree holds: tracked files and new files git does not ignore.

    Never run state (dvc.lock when untracked, .dvc/cache, .dvc/tmp, mlflow.db, mlruns/, .prefect/,
    models/, reports/): those are ignored, so a test's copy starts as a newcomer's clone does.
    """
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode()  # fmt: skip
    return sorted(name for name in set(listed.split("\0")) if name and (REPO / name).is_file())


def copy_repo(destination: Path, commit: bool = True) -> Path:
    """A copy of the project as a fresh clone would have it, as a git repository with one commit (DVC needs git)."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in project_files():
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    if commit:
        env = {**os.environ, **GIT_IDENTITY}
        for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "fresh clone"]):
            subprocess.run(command, cwd=destination, env=env, check=True, capture_output=True)
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


@pytest.fixture(scope="session")
def small_screen():
    """A real crisis screen (rules, lexicon, responses and a classifier) trained on every 10th labelled message.

    For fast tests of the mechanics of what uses the screen (chat, serve): its thresholds are set
    high, so that only clear messages fire and ordinary corpus turns reach the model. The screen's
    own quality, with the thresholds the safety stage chooses, is tests/model/test_safety.py's business.
    """
    from maeum.config import load_params
    from maeum.safety import Screen, evaluation
    from maeum.safety.normalise import Lexicon
    from maeum.safety.rules import load_rules
    from maeum.safety.screen import Responses
    from tasks.safety import train_screen

    safety = load_params(REPO / "params.yaml").safety
    with working_dir(REPO, {}):
        messages = evaluation.read_examples(safety.train_file)[::10]
        replies = evaluation.read_examples(safety.replies_file, evaluation.REPLY_LABELS)[::2]
        lexicon = Lexicon.load(safety.lexicon_file)
        trained, _ = train_screen(messages, replies, lexicon, safety)
        trained.thresholds = dataclasses.replace(trained.thresholds, check_in=0.9, crisis=0.97, reply=0.9, reply_ordinary=0.9)
        return Screen(load_rules(safety.rules_file), lexicon, trained, Responses.load(safety.responses_file),
                      safety.context_turns)  # fmt: skip

