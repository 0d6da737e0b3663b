"""Tokenized examples, and a real tiny training run tracked in a real MLflow store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from maeum import gemma
from maeum.gemma import decode
from maeum.dialogue import END_OF_TURN
from tasks.tokenize import TokenizedSplit, tokenize_examples


@pytest.fixture(scope="module")
def base(prepared, pipeline_dir):
    return gemma.load_base(pipeline_dir / prepared.model.base_dir)


def test_response_mask_covers_exactly_the_response_and_its_end_marker(prepared, pipeline_dir, base):
    examples = pd.read_parquet(pipeline_dir / prepared.preprocess.out_dir / "validation.parquet")
    split = TokenizedSplit.load(pipeline_dir / prepared.tokenize.out_dir / "validation.npz")
    for index in range(5):
        ids, weights = split.example(index)
        prompt_length = split.prompt_lengths[index]
        assert np.all(weights[:prompt_length] == 0) and np.all(weights[prompt_length:] == 1)
        assert decode(base.tokenizer, ids[weights == 1]) == examples.loc[index, "response_text"] + END_OF_TURN
        assert ids[0] == base.tokenizer.token_to_id("<bos>")
        assert decode(base.tokenizer, ids[1:prompt_length]) == examples.loc[index, "prompt"]


def test_loss_on_all_weights_every_token(prepared, pipeline_dir, base):
    examples = pd.read_parquet(pipeline_dir / prepared.preprocess.out_dir / "validation.parquet").head(3)
    split, _ = tokenize_examples(examples, base.tokenizer, 256, "all")
    assert np.all(split.weights == 1)


def test_truncation_drops_history_and_keeps_the_response(prepared, pipeline_dir, base):
    examples = pd.read_parquet(pipeline_dir / prepared.preprocess.out_dir / "train.parquet")
    third_turns = examples[examples["turn"] == 3].head(5).reset_index(drop=True)
    full, _ = tokenize_examples(third_turns, base.tokenizer, 1024, "response")
    budget = int(full.lengths.min()) - 8  # forces every example to give something up
    short, stats = tokenize_examples(third_turns, base.tokenizer, budget, "response")
    assert stats["truncated_examples"] == 5 and stats["dropped_history_turns"] >= 5 and stats["cut_response_tokens"] == 0
    assert int(short.lengths.max()) <= budget + 1
    for index in range(5):
        full_ids, full_weights = full.example(index)
        short_ids, short_weights = short.example(index)
        assert short_ids[short_weights == 1].tolist() == full_ids[full_weights == 1].tolist()
        assert short_ids[-len(third_turns.loc[index, "response_text"]) :].size  # response present
        user_tail = full.prompt(index)[-12:].tolist()
        assert short.prompt(index)[-12:].tolist() == user_tail  # the end of the user turn survives


def test_training_lowers_validation_loss_below_the_base(trained):
    result, metrics = trained
    assert metrics["val_loss_tuned"] < metrics["val_loss_base"]
    assert metrics["perplexity_tuned"] < metrics["perplexity_base"]
    assert [e.epoch for e in result.epochs] == [1, 2]
    assert result.epochs[1].val_loss < result.epochs[0].val_loss
    assert metrics["safety_crisis_recall"] == 1.0 and metrics["safety_false_positives"] == 0  # the project set, every run
    for key in ("chrf", "distinct_1", "distinct_2"):
        assert 0 <= metrics[key] <= (100 if key == "chrf" else 1)


def test_each_epoch_saved_an_adapter_that_reloads(trained, prepared, pipeline_dir):
    result, _ = trained
    out = pipeline_dir / prepared.train.out_dir
    assert sorted(p.name for p in out.glob("*.lora.h5")) == ["maeum_2_epoch1.lora.h5", "maeum_2_epoch2.lora.h5"]
    run = json.loads((out / "run.json").read_text())
    assert run["run_id"] == result.run_id and run["last_adapter"] == "maeum_2_epoch2.lora.h5"
    assert all(e["sample_prompt"] for e in run["epochs"])
    assert not (pipeline_dir / prepared.train.checkpoint_dir).exists()  # finished runs leave no resume state


def test_mlflow_run_holds_params_epoch_metrics_and_adapters(trained, prepared, pipeline_env):
    import mlflow

    result, metrics = trained
    client = mlflow.MlflowClient(tracking_uri=pipeline_env["MLFLOW_TRACKING_URI"])
    run = client.get_run(result.run_id)
    assert run.data.params["train.lora_rank"] == "2" and run.data.params["train.learning_rate"] == "0.0001"
    assert set(prepared.as_flat_dict()) <= set(run.data.params)
    for metric in ("train_loss", "val_loss", "train_accuracy"):
        history = client.get_metric_history(result.run_id, metric)
        assert [m.step for m in history] == [1, 2]
    assert run.data.metrics["val_loss_tuned"] == pytest.approx(metrics["val_loss_tuned"])
    assert run.data.tags["maeum.data_version"] and run.data.tags["maeum.preset"] == "tiny"
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "lora")}
    assert artifacts == {"lora/maeum_2_epoch1.lora.h5", "lora/maeum_2_epoch2.lora.h5"}
    assert {a.path for a in client.list_artifacts(result.run_id, "samples")} >= {"samples/epoch_1.txt", "samples/epoch_2.txt"}
    assert [a.path for a in client.list_artifacts(result.run_id, "plots")] == ["plots/loss_curve.png"]
    assert "base/assets" in {a.path for a in client.list_artifacts(result.run_id, "base")}


def test_killed_training_resumes_from_the_last_finished_epoch(prepared, pipeline_dir, pipeline_env, tmp_path):
    params = tmp_path / "params.yaml"
    base_dir = pipeline_dir / prepared.model.base_dir
    params.write_text(
        (pipeline_dir / "params.yaml").read_text()
        .replace("  epochs: 2\n", "  epochs: 3\n")
        + f"tokenize:\n  out_dir: {pipeline_dir / prepared.tokenize.out_dir}\n"
    )  # fmt: skip
    params.write_text(params.read_text().replace("model:\n", f"model:\n  base_dir: {base_dir}\n"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    first_epoch = tmp_path / "checkpoints/train/backup/training_metadata.json"  # epoch 1 fully done
    command = [sys.executable, "-m", "tasks.train", "--params", str(params)]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not first_epoch.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first_epoch.exists(), process.communicate()[0][-2000:] if process.poll() is not None else "no epoch in time"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "models/lora").exists()  # a killed run publishes nothing

    resumed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    output = resumed.stdout + resumed.stderr
    assert "Epoch 1/3" not in output and "Epoch 2/3" in output
    run = json.loads((tmp_path / "models/lora/run.json").read_text())
    assert [e["epoch"] for e in run["epochs"]] == [1, 2, 3]
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    assert len(client.search_runs([client.get_experiment_by_name("maeum-lora").experiment_id])) == 1
    assert [m.step for m in client.get_metric_history(run["run_id"], "val_loss")] == [1, 2, 3]
