"""train stage: a real small training run tracked in a real MLflow store; resume at any step; the settings users expect."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from maeum import gemma, tracking
from maeum.config import TinyModelParams, TrainParams, load_params
from maeum.progress import Progress
from maeum.tokenized import TokenizedSplit
from tasks import train as stage

TINY = TinyModelParams(num_layers=2, hidden_dim=16, intermediate_dim=32, num_query_heads=4, num_key_value_heads=2,
                       head_dim=8, sliding_window_size=64, pretrain_epochs=0)  # fmt: skip
VOCAB = 64
ALL_PROJECTIONS = {"query", "key", "value", "attention_output", "ffw_gating", "ffw_gating_2", "ffw_linear"}


def lora_arrays(path: Path) -> dict[str, np.ndarray]:
    import h5py

    arrays = {}
    with h5py.File(path, "r") as file:
        file.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return arrays


# === The session's run ===


def test_training_lowers_validation_loss_below_the_base(trained):
    result, metrics = trained
    assert metrics["val_loss_tuned"] < metrics["val_loss_base"] and metrics["val_bpc_tuned"] < metrics["val_bpc_base"]
    assert [e.epoch for e in result.epochs] == [1, 2]
    assert result.epochs[1].val_loss < result.epochs[0].val_loss


def test_each_epoch_saved_an_adapter_on_every_projection_that_reloads(trained, prepared, pipeline_dir):
    result, _ = trained
    out = pipeline_dir / prepared.train.out_dir
    assert sorted(p.name for p in out.glob("*.lora.h5")) == ["maeum_4_epoch1.lora.h5", "maeum_4_epoch2.lora.h5"]
    run = json.loads((pipeline_dir / prepared.train.run_file).read_text())
    assert run["run_id"] == result.run_id and run["adapter"] == "maeum_4_epoch2.lora.h5" and run["lora_targets"] == "all"
    assert not (pipeline_dir / prepared.train.checkpoint_dir).exists()  # finished runs leave no resume state
    base = gemma.load_base(pipeline_dir / prepared.model.base_dir)
    gemma.load_lora(base.causal_lm, out / run["adapter"])
    enabled = {layer.name for layer in base.causal_lm.backbone._flatten_layers() if getattr(layer, "lora_enabled", False)}
    assert enabled == ALL_PROJECTIONS  # all seven kinds of projection, not keras-hub's default query/value only


def test_mlflow_run_holds_step_and_epoch_metrics_adapters_and_settings(trained, prepared, pipeline_env, pipeline_dir):
    import mlflow

    result, metrics = trained
    client = mlflow.MlflowClient(tracking_uri=pipeline_env["MLFLOW_TRACKING_URI"])
    run = client.get_run(result.run_id)
    assert run.data.params["train.lora_rank"] == "4" and run.data.params["train.lora_targets"] == "all"
    assert set(prepared.as_flat_dict()) <= set(run.data.params)
    steps = [m.step for m in client.get_metric_history(result.run_id, "train_loss")]
    every = prepared.train.log_every_steps
    assert len(steps) >= 4 and steps == list(range(every, every * (len(steps) + 1), every))  # global steps
    assert [m.step for m in client.get_metric_history(result.run_id, "learning_rate")] == steps
    assert all(m.value > 0 for m in client.get_metric_history(result.run_id, "tokens_per_second"))
    last_step = result.epochs[-1].global_step
    assert [m.step for m in client.get_metric_history(result.run_id, "val_loss")] == [result.epochs[0].global_step, last_step]
    for metric in ("epoch_train_loss", "epoch_val_loss", "epoch_seconds"):
        assert [m.step for m in client.get_metric_history(result.run_id, metric)] == [1, 2]
    assert run.data.metrics["val_bpc_tuned"] == pytest.approx(metrics["val_bpc_tuned"])
    assert run.data.tags["maeum.train.lora_targets"] == "all" and run.data.tags["maeum.adapter"] == "maeum_4_epoch2.lora.h5"
    assert {a.path for a in client.list_artifacts(result.run_id, "lora")} == {"lora/maeum_4_epoch1.lora.h5",
                                                                            "lora/maeum_4_epoch2.lora.h5"}  # fmt: skip
    assert "base/assets" in {a.path for a in client.list_artifacts(result.run_id, "base")}


# === Resume after kill -9 at any step ===


def run_command(params_file: Path) -> list[str]:
    return [sys.executable, "-m", "tasks.train", "--params", str(params_file)]


@pytest.fixture(scope="module")
def resume_setup(prepared, pipeline_dir, tmp_path_factory):
    """Two folders training the same thing: one runs through, one is killed inside epoch 1 and rerun."""
    folders = {}
    for name in ("uninterrupted", "killed"):
        folder = tmp_path_factory.mktemp(name)
        text = (pipeline_dir / "params.yaml").read_text() + (
            f"tokenize:\n  out_dir: {pipeline_dir / prepared.tokenize.out_dir}\n"
        )
        text = text.replace("model:\n", f"model:\n  base_dir: {pipeline_dir / prepared.model.base_dir}\n")
        text = text.replace("  checkpoint_every_steps: 10\n", "  checkpoint_every_steps: 3\n").replace("  epochs: 2\n", "  epochs: 2\n  seed: 7\n")
        text = text.replace("raw_dir: corpus", f"raw_dir: {pipeline_dir / 'corpus'}")
        (folder / "params.yaml").write_text(text)
        folders[name] = folder
    return folders


def test_killed_mid_epoch_resumes_and_ends_where_an_uninterrupted_run_ends(resume_setup):
    env_base = {**os.environ, "PYTHONUNBUFFERED": "1"}
    uninterrupted, killed = resume_setup["uninterrupted"], resume_setup["killed"]
    env = {**env_base, "MLFLOW_TRACKING_URI": f"sqlite:///{uninterrupted / 'mlflow.db'}"}
    done = subprocess.run(run_command(uninterrupted / "params.yaml"), cwd=uninterrupted, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    env = {**env_base, "MLFLOW_TRACKING_URI": f"sqlite:///{killed / 'mlflow.db'}"}
    params = load_params(killed / "params.yaml")
    checkpoint = killed / params.train.checkpoint_dir / stage.STEP_CHECKPOINT
    process = subprocess.Popen(run_command(killed / "params.yaml"), cwd=killed, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    killed_at = None
    while process.poll() is None and time.monotonic() < deadline:
        if checkpoint.exists():
            with np.load(checkpoint) as data:
                state = json.loads(data["state"].tobytes())
            if state["epoch"] == 0 and state["global_step"] >= 6:  # two step checkpoints into epoch 1
                process.send_signal(signal.SIGKILL)
                killed_at = state
                break
        time.sleep(0.05)
    process.wait()
    assert killed_at is not None, "the run ended before it could be killed inside epoch 1"
    assert not (killed / params.train.out_dir).exists()  # a killed run publishes nothing

    resumed = subprocess.run(run_command(killed / "params.yaml"), cwd=killed, env=env,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    assert f"resuming at epoch 1, batch {killed_at['step_in_epoch']}" in output  # not from the start of epoch 1

    final = [json.loads((folder / params.train.run_file).read_text()) for folder in (uninterrupted, killed)]
    assert [e["epoch"] for e in final[1]["epochs"]] == [1, 2]
    expected = lora_arrays(uninterrupted / params.train.out_dir / final[0]["adapter"])
    got = lora_arrays(killed / params.train.out_dir / final[1]["adapter"])
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-6, err_msg=name)

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name(params.tracking.experiment).experiment_id])  # one run, continued
    assert run.info.run_id == final[1]["run_id"]
    steps = sorted({m.step for m in client.get_metric_history(run.info.run_id, "train_loss")})
    every = params.train.log_every_steps
    assert steps == list(range(every, final[1]["epochs"][-1]["global_step"] + 1, every))  # every global step logged, none skipped


# === The settings, each checked so that ignoring it would fail ===


def ragged_split(count: int, length: int, seed: int = 0) -> TokenizedSplit:
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, VOCAB, size=count * length).astype("int32")
    return TokenizedSplit(ids=ids, weights=np.ones(count * length, "float32"),
                          offsets=np.arange(0, count * length + 1, length, dtype="int64"),
                          prompt_lengths=np.ones(count, "int32"), talk_ids=np.asarray([f"t{i}" for i in range(count)]),
                          turns=np.ones(count, "int32"))  # fmt: skip


def fresh_causal_lm():
    import keras
    import keras_hub

    keras.utils.set_random_seed(3)
    return keras_hub.models.GemmaCausalLM(backbone=gemma.tiny_backbone(TINY, VOCAB), preprocessor=None)


def with_visible_lora(model):
    # LoRA's B factors start at zero; give them values so every update is visible in every factor.
    for variable in model.trainable_variables:
        variable.assign(np.random.default_rng(1).normal(0, 0.05, variable.shape).astype("float32"))
    return model


def fresh_model(train: TrainParams, total_steps: int = 100):
    """The model the train stage's loop trains (loss positions only) on a fresh tiny backbone."""
    return with_visible_lora(stage.lora_training_model(fresh_causal_lm(), train, total_steps))


def fresh_full_logits_model(train: TrainParams, total_steps: int = 100):
    """keras-hub's `GemmaCausalLM` itself, compiled as the train stage compiles, to compare with."""
    causal_lm = fresh_causal_lm()
    stage.compile_for_lora(causal_lm, train, total_steps)
    return with_visible_lora(causal_lm)


def lora_values(model) -> list[np.ndarray]:
    import keras

    return [keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables]


def single_bucket_plans(split: TokenizedSplit, rows_per_batch: int) -> list:
    from maeum import batching

    return [batching.BatchPlan(int(split.lengths.max()) - 1, np.arange(start, start + rows_per_batch))
            for start in range(0, len(split), rows_per_batch)]  # fmt: skip


def train_steps(model, split: TokenizedSplit, rows_per_batch: int) -> None:
    from maeum import loss_positions

    plans = single_bucket_plans(split, rows_per_batch)
    counts = loss_positions.counts_per_bucket(split, [plans[0].length])
    for x, y, weights in stage.training_batches(split, plans, counts):
        model.train_on_batch(x, y, sample_weight=weights)


BASE_TRAIN = TrainParams(lora_rank=2, learning_rate=1e-2, jit_compile=False)


def test_gradient_accumulation_over_k_batches_equals_one_step_of_k_times_the_batch():
    split = ragged_split(16, 12)
    accumulated = fresh_model(dataclasses.replace(BASE_TRAIN, gradient_accumulation_steps=2))
    train_steps(accumulated, split, 4)  # 4 batches of 4: two optimizer updates
    large = fresh_model(BASE_TRAIN)
    train_steps(large, split, 8)  # 2 batches of 8: two optimizer updates
    single = fresh_model(BASE_TRAIN)
    train_steps(single, split, 4)  # 4 batches of 4 without accumulation: four updates
    for ours, theirs, other in zip(lora_values(accumulated), lora_values(large), lora_values(single)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)
    assert any(not np.allclose(a, b, atol=1e-6) for a, b in zip(lora_values(accumulated), lora_values(single)))


def test_gradient_clipping_bounds_the_update():
    split = ragged_split(8, 12)
    before = lora_values(fresh_model(BASE_TRAIN))
    free, clipped = fresh_model(BASE_TRAIN), fresh_model(dataclasses.replace(BASE_TRAIN, gradient_clip_norm=1e-9))
    train_steps(free, split, 8)
    train_steps(clipped, split, 8)
    moved_free = sum(float(np.abs(a - b).sum()) for a, b in zip(lora_values(free), before))
    moved_clipped = sum(float(np.abs(a - b).sum()) for a, b in zip(lora_values(clipped), before))
    assert moved_clipped < 0.01 * moved_free


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_learning_rate_schedule_warms_up_then_follows_its_shape(schedule):
    train = dataclasses.replace(BASE_TRAIN, lr_schedule=schedule, warmup_steps=4)
    total = 20
    rates = [stage.learning_rate_at(train, step, total) for step in range(total)]
    assert rates[:4] == pytest.approx([0.25e-2, 0.5e-2, 0.75e-2, 1e-2])
    if schedule == "constant":
        assert rates[4:] == pytest.approx([1e-2] * (total - 4))
    else:
        assert rates[4] == pytest.approx(1e-2) and rates[-1] < 0.1e-2 and all(a >= b for a, b in zip(rates[4:], rates[5:]))
    keras_schedule = stage.learning_rate_schedule(train, total)
    assert [float(keras_schedule(step)) for step in range(total)] == pytest.approx(rates, rel=1e-5)


def test_the_schedule_drives_the_optimizer():
    import keras

    train = dataclasses.replace(BASE_TRAIN, lr_schedule="linear", warmup_steps=2)
    causal_lm = fresh_model(train, total_steps=4)
    train_steps(causal_lm, ragged_split(12, 12), 4)  # three batches
    optimizer = causal_lm.optimizer
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(stage.learning_rate_at(train, 3, 4))


# === Loss positions: the training model is the full model where the loss is taken ===


def response_split(count: int, seed: int = 0) -> TokenizedSplit:
    """Examples of ragged lengths whose loss weights cover only a response at the end, as tokenize writes them."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(6, 25, count)
    prompts = (lengths * rng.uniform(0.3, 0.8, count)).astype("int32")
    weights = np.concatenate([(np.arange(n) >= p).astype("float32") for n, p in zip(lengths, prompts)])
    return TokenizedSplit(ids=rng.integers(4, VOCAB, int(lengths.sum())).astype("int32"), weights=weights,
                          offsets=np.concatenate([[0], np.cumsum(lengths)]).astype("int64"), prompt_lengths=prompts,
                          talk_ids=np.asarray([f"t{i}" for i in range(count)]), turns=np.ones(count, "int32"))  # fmt: skip


def test_loss_positions_cover_every_weighted_target_with_one_count_per_bucket():
    from maeum import batching, loss_positions

    split = response_split(64)
    boundaries = [12, 18, 24]
    counts = loss_positions.counts_per_bucket(split, boundaries)
    assert all(1 <= counts[length] <= length for length in boundaries) and counts[12] < 12
    plans = stage.epoch_plan(split.lengths - 1, boundaries, dataclasses.replace(BASE_TRAIN, batch_size=4), 0)
    for plan, (x, y, weights), (px, py, pweights) in zip(plans, batching.iterate_batches(split, plans),
                                                         stage.training_batches(split, plans, counts)):  # fmt: skip
        assert px[loss_positions.INPUT].shape == (4, counts[plan.length])
        rows = np.arange(4)[:, None]
        np.testing.assert_array_equal(py, y[rows, px[loss_positions.INPUT]])
        assert pweights.sum() == weights.sum() and (pweights > 0).sum() == (weights > 0).sum()
    x, y, weights = next(batching.iterate_batches(split, plans))
    with pytest.raises(ValueError, match="do not hold every weighted target"):
        loss_positions.pick(x, y, weights, 1)


def test_with_loss_on_every_token_the_count_is_the_longest_example_of_the_bucket():
    from maeum import loss_positions

    split = ragged_split(4, 10)  # weight 1 on every id, as loss_on: all
    assert loss_positions.counts_per_bucket(split, [9, 16]) == {9: 9, 16: 9}


def test_the_training_model_gives_the_full_models_logits_at_the_loss_positions():
    import keras

    from maeum import batching, loss_positions

    full = fresh_full_logits_model(BASE_TRAIN)
    picked_model = loss_positions.training_model(full.backbone)
    split = response_split(16)
    plans = single_bucket_plans(split, 8)
    counts = loss_positions.counts_per_bucket(split, [plans[0].length])
    for (x, _, _), (px, _, _) in zip(batching.iterate_batches(split, plans), stage.training_batches(split, plans, counts)):
        logits = keras.ops.convert_to_numpy(full(x, training=False))
        expected = np.take_along_axis(logits, px[loss_positions.INPUT][..., None].astype("int64"), axis=1)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(picked_model(px, training=False)), expected, rtol=1e-5, atol=1e-5)


def test_a_training_step_has_the_full_models_weighted_loss_accuracy_and_update():
    from maeum import batching, loss_positions

    split = response_split(16)
    plans = single_bucket_plans(split, 8)
    counts = loss_positions.counts_per_bucket(split, [plans[0].length])
    full, ours = fresh_full_logits_model(BASE_TRAIN), fresh_model(BASE_TRAIN)
    for batch, picked in zip(batching.iterate_batches(split, plans), stage.training_batches(split, plans, counts)):
        x, y, weights = batch
        expected = full.train_on_batch(x, y, sample_weight=weights, return_dict=True)
        x, y, weights = picked
        got = ours.train_on_batch(x, y, sample_weight=weights, return_dict=True)
        assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5)
        assert got["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-6)
    for got, expected in zip(lora_values(ours), lora_values(full)):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_step_checkpoints_of_the_full_logits_model_name_the_training_models_variables():
    full, ours = fresh_full_logits_model(BASE_TRAIN), fresh_model(BASE_TRAIN)
    assert [v.path for v in ours.trainable_variables] == [v.path for v in full.trainable_variables]

    # An optimizer's variables are named "<optimizer>/<model variable>_<slot>"; the optimizer's own
    # name counts the optimizers made in the process, which is one in a training process.
    def slots(model) -> list[str]:
        return [v.path.split("/", 1)[1] for v in model.optimizer.variables]

    assert slots(ours) == slots(full) and len(slots(ours)) > len(ours.trainable_variables)


def first_examples(split: TokenizedSplit, count: int) -> TokenizedSplit:
    end = int(split.offsets[count])
    return TokenizedSplit(ids=split.ids[:end], weights=split.weights[:end], offsets=split.offsets[: count + 1],
                          prompt_lengths=split.prompt_lengths[:count], talk_ids=split.talk_ids[:count],
                          turns=split.turns[:count])  # fmt: skip


def test_early_stopping_stops_when_validation_gets_worse_and_keeps_the_best_epochs_adapter(prepared, pipeline_dir,
                                                                                           pipeline_env, tmp_path):  # fmt: skip
    from tests.model.conftest import working_dir

    # Sixteen training examples and a high rate: the model memorises them, and validation loss turns up.
    tokenized = tmp_path / "tokenized"
    tokenized.mkdir()
    first_examples(TokenizedSplit.load(pipeline_dir / prepared.tokenize.split_path("train")), 16).save(tokenized / "train.npz")
    TokenizedSplit.load(pipeline_dir / prepared.tokenize.split_path("validation")).save(tokenized / "validation.npz")
    overrides = {"train.learning_rate": 2.0e-2, "train.epochs": 12, "train.early_stopping_patience": 1, "train.batch_size": 4,
                 "tokenize.out_dir": str(tokenized), "train.out_dir": str(tmp_path / "lora"),
                 "train.checkpoint_dir": str(tmp_path / "checkpoints")}  # fmt: skip
    with working_dir(pipeline_dir, pipeline_env):
        params = load_params("params.yaml", overrides)
        result = stage.run(params)
    losses = [e.val_loss for e in result.epochs]
    best = int(np.argmin(losses)) + 1
    assert len(result.epochs) < 12 and losses[-1] > losses[-2]  # stopped at the first epoch that got worse
    assert best < len(result.epochs)
    assert result.adapter == stage.adapter_file_name(params.train, best) != stage.adapter_file_name(params.train, len(losses))
    assert json.loads((tmp_path / "lora" / "run.json").read_text())["adapter"] == result.adapter


def test_a_changed_setting_changes_the_params_hash_and_the_run_name():
    params = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    changed = load_params(Path(__file__).resolve().parents[2] / "params.yaml", {"train.gradient_accumulation_steps": 4})
    assert tracking.params_hash(params) != tracking.params_hash(changed)
    assert "x4" in tracking.run_name(changed, "d" * 32) and "x4" not in tracking.run_name(params, "d" * 32)
    assert tracking.run_tags(changed, "d")["maeum.train.gradient_accumulation_steps"] == "4"
    chat_only = load_params(Path(__file__).resolve().parents[2] / "params.yaml", {"chat.top_k": 9, "serve.port": 9})
    assert tracking.params_hash(chat_only) == tracking.params_hash(params)  # decoding and serving do not retrain


# === Progress ===


class Terminal:
    def __init__(self):
        self.written = []

    def isatty(self):
        return True

    def write(self, text):
        self.written.append(text)

    def flush(self):
        pass


def test_progress_draws_a_bar_on_a_terminal():
    terminal = Terminal()
    progress = Progress("train epoch 1/2", 10, stream=terminal)
    for _ in range(10):
        progress.update(tokens=100, loss=1.5)
    progress.close()
    text = "".join(terminal.written)
    assert "\r[########################] train epoch 1/2 10/10" in text and "tok/s" in text and "loss 1.5000" in text
    assert "ETA" in text and text.endswith("\n")


def test_progress_writes_periodic_log_lines_without_a_terminal(caplog):
    import io
    import logging

    with caplog.at_level(logging.INFO, logger="maeum.progress"):
        progress = Progress("scoring base", 100, stream=io.StringIO(), every_seconds=0.0)
        for _ in range(3):
            progress.update(tokens=10)
        progress.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "maeum.progress"]
    assert len(lines) == 4 and lines[-1].startswith("scoring base 3/100") and "\r" not in "".join(lines)
