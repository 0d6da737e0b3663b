"""A small real pipeline run once per test session: preprocess, model, tokenize, safety, emotion, train, evaluate.

Stages run in-process through their `run(params)` edges, in a temporary folder with its own
params.yaml and its own MLflow store, on a slice of the sample corpus and a stratified slice of
the safety set, with settings that keep the whole run near a minute on 2 cores (one padded
length, no XLA: compiling costs more than training at this size). The model tests share it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from maeum.config import Params, load_params
from tests.conftest import REPO, SAMPLE_DIR, working_dir

CORPUS_SLICE = {"Training.json": 160, "Validation.json": 40}  # dialogues
SAFETY_SLICE = 6  # every 6th labelled message (stratified by file order): the screen trains in seconds
PIPELINE_PARAMS = """\
data:
  raw_dir: corpus
model:
  tiny:
    vocabulary_size: 1500
    pretrain_epochs: 2
safety:
  rules_file: {safety}/rules.yaml
  lexicon_file: {safety}/lexicon.yaml
  responses_file: {safety}/responses.yaml
  train_file: safety_train.tsv
  heldout_file: {safety}/heldout.tsv
  replies_file: {safety}/replies.tsv
  replies_heldout_file: {safety}/replies_heldout.tsv
train:
  sequence_length: 128
  lora_rank: 4
  lora_targets: all
  learning_rate: 3.0e-3
  epochs: 2
  padding: fixed
  jit_compile: false
  sample_max_new_tokens: 8
  log_every_steps: 5
  checkpoint_every_steps: 10
evaluate:
  num_generations: 6
  max_new_tokens: 12
"""


def write_slice(source: Path, target: Path, count: int) -> None:
    records = json.loads(source.read_text(encoding="utf-8"))[:count]
    target.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")


def write_safety_slice(source: Path, target: Path, step: int) -> None:
    with source.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    with target.open("w", encoding="utf-8") as handle:
        handle.write("\t".join(rows[0]) + "\n")
        for row in rows[1::step]:
            handle.write("\t".join(row) + "\n")


@pytest.fixture(scope="session")
def pipeline_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pipeline")
    (folder / "corpus").mkdir()
    for name, count in CORPUS_SLICE.items():
        write_slice(SAMPLE_DIR / name, folder / "corpus" / name, count)
    write_safety_slice(REPO / "data" / "safety" / "train.tsv", folder / "safety_train.tsv", SAFETY_SLICE)
    (folder / "params.yaml").write_text(PIPELINE_PARAMS.format(safety=REPO / "data" / "safety"), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def pipeline_env(pipeline_dir):
    return {"MLFLOW_TRACKING_URI": f"sqlite:///{pipeline_dir / 'mlflow.db'}"}


@pytest.fixture(scope="session")
def prepared(pipeline_dir, pipeline_env) -> Params:
    """Preprocessed examples, the tiny base and tokenized splits (no training yet)."""
    from tasks import model, preprocess, tokenize

    with working_dir(pipeline_dir, pipeline_env):
        params = load_params("params.yaml")
        preprocess.run(params)
        model.run(params)
        tokenize.run(params)
    return params


@pytest.fixture(scope="session")
def screened(prepared, pipeline_dir, pipeline_env) -> dict:
    """The safety stage (on the slice) and the emotion stage have run; returns the safety metrics."""
    from tasks import emotion, safety

    with working_dir(pipeline_dir, pipeline_env):
        emotion.run(prepared)
        return safety.run(prepared)


@pytest.fixture(scope="session")
def screen(screened, prepared, pipeline_dir):
    from maeum.safety import Screen

    with working_dir(pipeline_dir, {}):
        return Screen.load(prepared.safety)


@pytest.fixture(scope="session")
def trained(prepared, screened, pipeline_dir, pipeline_env):
    """The training result and evaluation metrics of the small run."""
    from tasks import evaluate, train

    with working_dir(pipeline_dir, pipeline_env):
        result = train.run(prepared)
        metrics = evaluate.run(prepared)
    return result, metrics


@pytest.fixture
def in_pipeline_dir(pipeline_dir, pipeline_env):
    with working_dir(pipeline_dir, pipeline_env):
        yield pipeline_dir
