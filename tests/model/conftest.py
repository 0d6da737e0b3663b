"""A tiny pipeline run once per test session: preprocess -> model -> tokenize -> train -> evaluate.

Stages run in-process through their cores, in a temporary folder with its own params.yaml and
its own MLflow store, so the model tests share one real (small) training run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from maeum.config import Params, load_params
from tests.conftest import SAMPLE_DIR, working_dir

PIPELINE_PARAMS = """\
data:
  raw_dir: {raw_dir}
model:
  tiny:
    pretrain_epochs: 2
train:
  epochs: 2
evaluate:
  num_generations: 4
  safety_rules: {safety_dir}/rules.yaml
  safety_eval_set: {safety_dir}/eval_set.yaml
"""


@pytest.fixture(scope="session")
def pipeline_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pipeline")
    (folder / "params.yaml").write_text(PIPELINE_PARAMS.format(raw_dir=SAMPLE_DIR, safety_dir=SAMPLE_DIR.parent / "safety"))
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
def trained(prepared, pipeline_dir, pipeline_env):
    """The training result and evaluation metrics of the tiny default run."""
    from tasks import evaluate, train

    with working_dir(pipeline_dir, pipeline_env):
        result = train.run(prepared)
        metrics = evaluate.run(prepared)
    return result, metrics


@pytest.fixture
def in_pipeline_dir(pipeline_dir, pipeline_env):
    with working_dir(pipeline_dir, pipeline_env):
        yield pipeline_dir
