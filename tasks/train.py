"""train stage: LoRA fine-tuning of the base, tracked in MLflow, resumable at any step.

`GemmaCausalLM` + `backbone.enable_lora(rank)` (query/value, or every projection), AdamW without
decay on bias/scale, and a loss averaged over the weighted (response) tokens only. The model the
loop trains shares the `GemmaCausalLM`'s backbone but projects onto the vocabulary only at the
positions that carry loss (`maeum.loss_positions`): the same loss and gradients, without the
logits of prompt and padding. The loop is the project's own, one `train_on_batch` per batch, so
that it can:

- show a progress bar (steps, tokens/s, loss, ETA; log lines when not on a terminal);
- log `train_loss`, `learning_rate` and `tokens_per_second` to MLflow every `train.log_every_steps`
  steps and `val_loss` every `train.eval_every_steps` (step = global step);
- save LoRA and optimizer state every `train.checkpoint_every_steps` steps, so a killed run
  (kill -9 at any step) loses at most that many steps and its rerun continues the same MLflow run
  with exactly the batches an uninterrupted run would have seen (each epoch's order is a pure
  function of the seed and the epoch);
- warm up and decay the learning rate, accumulate gradients, clip them, and stop early.

After each epoch: the LoRA weights as `<name>_<rank>_epoch<N>.lora.h5`, the validation loss and a
sample reply to the first validation prompt. The output adapter is the last epoch's, or with early
stopping the best epoch's; only a finished training replaces `train.out_dir`.

    python -m tasks.train [--params params.yaml]
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maeum import atomic, batching, distribution, gemma, loss_positions, scoring, tracking
from maeum.config import SPLITS, Params, TrainParams
from maeum.corpus import data_version
from maeum.progress import Progress
from maeum.runtime import stage_params
from maeum.tokenized import TokenizedSplit

log = logging.getLogger(__name__)

HISTORY_FILE = "history.json"
RUN_ID_FILE = "mlflow_run_id"  # in train.checkpoint_dir, so a resumed run logs into the same MLflow run
STAGING_DIR = "lora"  # in train.checkpoint_dir: per-epoch adapters before the finished set replaces out_dir
STEP_CHECKPOINT = "step.npz"  # in train.checkpoint_dir: LoRA + optimizer state + loop position
NO_DECAY = ["bias", "scale"]  # as in the original recipe: norms' scales and biases are not decayed
# keras-hub's default LoRA layers (query and value), or every attention and feed-forward projection.
LORA_TARGETS = {"query_value": None, "all": ("query", "key", "value", "attention_output", "ffw_gating", "ffw_gating_2",
                                              "ffw_linear")}  # fmt: skip
SCORING_BATCH = 8  # validation needs no gradients: at least this wide


# === Core: batches, schedule, model ===


def boundaries_for(train: TrainParams, input_lengths: np.ndarray) -> list[int]:
    """Bucket lengths for `train.padding`: the recipe's one fixed length, the given buckets, or the best `bucket_count`."""
    if train.padding == "fixed":
        return [train.sequence_length]
    if train.bucket_boundaries:
        return sorted({b for b in train.bucket_boundaries if b < train.sequence_length} | {train.sequence_length})
    return batching.best_boundaries(input_lengths, train.bucket_count, train.sequence_length)


def epoch_plan(lengths: np.ndarray, boundaries: list[int], train: TrainParams, epoch: int) -> list[batching.BatchPlan]:
    """The batches of one epoch, a pure function of (seed, epoch): a resumed run sees the same order."""
    rng = np.random.default_rng([train.seed, epoch]) if train.shuffle else None
    return batching.plan_batches(lengths, boundaries, train.batch_size, rng)


def learning_rate_at(train: TrainParams, step: int, total_steps: int) -> float:
    """The schedule as a plain function (for logs and tests): linear warm-up, then constant, linear or cosine decay to 0."""
    if train.warmup_steps and step < train.warmup_steps:
        return train.learning_rate * (step + 1) / train.warmup_steps
    if train.lr_schedule == "constant":
        return train.learning_rate
    span = max(total_steps - train.warmup_steps, 1)
    progress = min(max(step - train.warmup_steps, 0) / span, 1.0)
    if train.lr_schedule == "linear":
        return train.learning_rate * (1.0 - progress)
    return train.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))


def learning_rate_schedule(train: TrainParams, total_steps: int) -> Any:
    """`learning_rate_at` as a Keras schedule (evaluated on the optimizer's batch counter)."""
    import keras

    class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            step = keras.ops.cast(step, "float32")
            base = train.learning_rate
            warmup = float(max(train.warmup_steps, 1))
            warm = base * (step + 1.0) / warmup
            span = float(max(total_steps - train.warmup_steps, 1))
            progress = keras.ops.clip((step - train.warmup_steps) / span, 0.0, 1.0)
            if train.lr_schedule == "linear":
                decayed = base * (1.0 - progress)
            elif train.lr_schedule == "cosine":
                decayed = base * 0.5 * (1.0 + keras.ops.cos(math.pi * progress))
            else:
                decayed = keras.ops.convert_to_tensor(base, "float32") + 0.0 * step
            return keras.ops.where(step < train.warmup_steps, warm, decayed) if train.warmup_steps else decayed

        def get_config(self):
            return {}

    return WarmupDecay()


def enable_lora(backbone: Any, train: TrainParams) -> None:
    """LoRA of `train.lora_rank` on `train.lora_targets` (keras-hub freezes everything else)."""
    backbone.enable_lora(rank=train.lora_rank, target_layer_names=LORA_TARGETS[train.lora_targets])


def compile_for_lora(model: Any, train: TrainParams, total_steps: int) -> None:
    """Enables LoRA on `model.backbone` and compiles `model` with the recipe's optimizer, loss and metric, plus the
    schedule, accumulation and clipping."""
    import keras

    enable_lora(model.backbone, train)
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate_schedule(train, total_steps), weight_decay=train.weight_decay,
        gradient_accumulation_steps=train.gradient_accumulation_steps if train.gradient_accumulation_steps > 1 else None,
        global_clipnorm=train.gradient_clip_norm,
    )  # fmt: skip
    optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
    model.compile(
        optimizer=optimizer,
        # The default reduction divides by every position, padding and prompt included, so the loss
        # would shrink as prompts grow; this one averages over the weighted (response) tokens.
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight"),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=train.jit_compile,
    )
    optimizer.build(model.trainable_variables)  # its variables exist now, so a checkpoint can be restored into them


def lora_training_model(causal_lm: Any, train: TrainParams, total_steps: int) -> Any:
    """The model the loop trains: `causal_lm`'s backbone with LoRA, projecting only at loss positions, compiled.

    Its inputs are `training_batches`'. Adapters, generation and scoring keep using `causal_lm`.
    """
    model = loss_positions.training_model(causal_lm.backbone)
    compile_for_lora(model, train, total_steps)
    causal_lm.jit_compile = train.jit_compile  # generate() follows it, and causal_lm itself is no longer compiled
    return model


def training_batches(split: TokenizedSplit, plans: list[batching.BatchPlan],
                     counts: dict[int, int]) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]]:  # fmt: skip
    """The planned batches as `lora_training_model` takes them: `counts[L]` loss positions per row of a batch of length L.

    Args:
        split: the examples.
        plans: the batches (`epoch_plan`).
        counts: `loss_positions.counts_per_bucket(split, boundaries)`.
    """
    for plan, batch in zip(plans, batching.iterate_batches(split, plans), strict=True):
        yield loss_positions.pick(*batch, counts[plan.length])


def adapter_file_name(train: TrainParams, epoch: int) -> str:
    return f"{train.adapter_name}_{train.lora_rank}_epoch{epoch}.lora.h5"


def save_lora(causal_lm: Any, path: Path) -> None:
    """Saves LoRA weights atomically (keras-hub insists on the `.lora.h5` suffix, so the temp name keeps it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name[: -len('.lora.h5')]}.tmp.lora.h5")
    causal_lm.backbone.save_lora_weights(str(tmp))
    tmp.replace(path)


# === Core: step checkpoints ===


@dataclass
class LoopState:
    """Where the loop is: the next batch to train is batch `step_in_epoch` of epoch `epoch` (0-based).

    `settings` identifies the training settings the state belongs to (`settings_key`): a checkpoint
    left by a run with other settings is refused instead of silently continued.
    """

    settings: str = ""
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = 0
    epochs_without_improvement: int = 0


def settings_key(train: TrainParams, train_examples: int) -> str:
    """What a checkpoint must match to be resumed: every train setting but the places and the logging cadence."""
    import hashlib

    kept = {k: v for k, v in asdict(train).items()
            if k not in ("out_dir", "checkpoint_dir", "log_every_steps", "eval_every_steps", "checkpoint_every_steps")}  # fmt: skip
    return hashlib.md5(json.dumps([kept, train_examples], sort_keys=True, default=str).encode()).hexdigest()


def save_step_checkpoint(model: Any, state: LoopState, path: Path) -> None:
    """LoRA factors, optimizer variables and the loop position, in one file replaced atomically.

    Names are the variables' paths: the backbone's whichever model trains it, so a checkpoint left
    by the full-logits `GemmaCausalLM` (this stage before `lora_training_model`) still resumes.
    """
    import keras

    arrays = {f"model/{v.path}": keras.ops.convert_to_numpy(v) for v in model.trainable_variables}
    arrays.update({f"optimizer/{v.path}": keras.ops.convert_to_numpy(v) for v in model.optimizer.variables})
    arrays["state"] = np.frombuffer(json.dumps(asdict(state)).encode(), dtype=np.uint8)
    with atomic.atomic_path(path) as tmp, tmp.open("wb") as handle:
        np.savez(handle, **arrays)


def load_step_checkpoint(model: Any, path: Path) -> LoopState:
    """Restores what `save_step_checkpoint` saved into a model compiled the same way; returns the loop position."""
    with np.load(path, allow_pickle=False) as data:
        saved = {name: data[name] for name in data.files}
    variables = {f"model/{v.path}": v for v in model.trainable_variables}
    variables.update({f"optimizer/{v.path}": v for v in model.optimizer.variables})
    missing = sorted(set(variables) - set(saved))
    if missing:
        raise RuntimeError(f"{path} does not match this model (missing {missing[:3]}...): delete it to start over")
    for name, variable in variables.items():
        variable.assign(saved[name])
    return LoopState(**json.loads(saved["state"].tobytes().decode()))


# === Core: the loop ===


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    adapter: str
    sample_prompt: str
    sample_reply: str
    seconds: float
    global_step: int


@dataclass
class StepLog:
    """What the loop reports every `log_every_steps` steps."""

    global_step: int
    train_loss: float
    learning_rate: float
    tokens_per_second: float


@dataclass
class Hooks:
    """The edge's side of the loop: tracking and files. Every hook is optional."""

    on_step: Callable[[StepLog], None] = lambda step: None
    on_validation: Callable[[int, float], None] = lambda global_step, val_loss: None
    on_epoch: Callable[[EpochRecord], None] = lambda record: None
    checkpoint: Path | None = None  # where step checkpoints go; None: none (processes other than 0)
    staging: Path | None = None  # where per-epoch adapters go; None: none


def process_rows(x: dict[str, np.ndarray], y: np.ndarray, weights: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray]:
    """This process's rows of a global batch in a multi-host data-parallel run (all rows otherwise)."""
    count, index = distribution.process_count(), distribution.process_index()
    if count == 1:
        return x, y, weights
    rows = len(y) // count
    part = slice(index * rows, (index + 1) * rows)
    return {k: v[part] for k, v in x.items()}, y[part], weights[part]


def fit_lora(base: gemma.LoadedBase, train_split: TokenizedSplit, validation_split: TokenizedSplit, train: TrainParams,
             hooks: Hooks | None = None) -> LoopState:  # fmt: skip
    """Fine-tunes `base.causal_lm` in place with LoRA; resumes from `hooks.checkpoint` when it exists.

    Args:
        base: the loaded base model and tokenizer.
        train_split, validation_split: tokenized examples.
        train: the `train` section of params.yaml.
        hooks: tracking, checkpoint and adapter places (see `Hooks`).

    Returns:
        The final loop state (best epoch and its validation loss).
    """
    import keras

    hooks = hooks or Hooks()
    lengths = train_split.lengths - 1
    boundaries = boundaries_for(train, lengths)
    steps_per_epoch = len(epoch_plan(lengths, boundaries, train, 0))
    total_steps = steps_per_epoch * train.epochs
    keras.utils.set_random_seed(train.seed)
    model = lora_training_model(base.causal_lm, train, total_steps)
    counts = loss_positions.counts_per_bucket(train_split, boundaries)
    state = LoopState(settings=settings_key(train, len(train_split)))
    if hooks.checkpoint is not None and hooks.checkpoint.exists():
        saved = load_step_checkpoint(model, hooks.checkpoint)
        if saved.settings != state.settings:
            raise RuntimeError(f"{hooks.checkpoint} was left by a training with other settings or data: delete "
                               f"{hooks.checkpoint.parent} to start over, or restore the settings to resume")  # fmt: skip
        state = saved
        log.info("resuming at epoch %d, batch %d (global step %d)", state.epoch + 1, state.step_in_epoch, state.global_step)
    generator = gemma.ReplyGenerator(base, prompt_budget=train.sequence_length, max_new_tokens=train.sample_max_new_tokens)
    sample_ids = validation_split.prompt(0)
    log.info("%d batches per epoch in %d shapes %s; %d steps in all", steps_per_epoch, len(boundaries), boundaries, total_steps)
    log.info("loss positions per bucket length: %s", counts)

    def validation_loss() -> float:
        return scoring.score_examples(base.causal_lm, validation_split, boundaries, max(train.batch_size, SCORING_BATCH)).mean_loss

    while state.epoch < train.epochs:
        epoch_started = time.perf_counter()
        plans = epoch_plan(lengths, boundaries, train, state.epoch)
        progress = Progress(f"train epoch {state.epoch + 1}/{train.epochs}", len(plans), start=state.step_in_epoch)
        window_loss, window_tokens, epoch_loss, epoch_correct, epoch_tokens = 0.0, 0, 0.0, 0.0, 0
        for batch in training_batches(train_split, plans[state.step_in_epoch :], counts):
            x, y, weights = process_rows(*batch)
            logs = model.train_on_batch(x, y, sample_weight=weights, return_dict=True)
            tokens = int(batch[2].sum())
            loss = float(logs["loss"])
            window_loss += loss * tokens
            window_tokens += tokens
            epoch_loss += loss * tokens
            epoch_correct += float(logs.get("accuracy", 0.0)) * tokens
            epoch_tokens += tokens
            state.step_in_epoch += 1
            state.global_step += 1
            progress.update(tokens=int(batch[0]["padding_mask"].sum()), loss=loss)
            if train.log_every_steps and state.global_step % train.log_every_steps == 0:
                hooks.on_step(StepLog(state.global_step, window_loss / max(window_tokens, 1),
                                      learning_rate_at(train, state.global_step - 1, total_steps),
                                      progress.tokens_per_second))  # fmt: skip
                window_loss, window_tokens = 0.0, 0
            if train.eval_every_steps and state.global_step % train.eval_every_steps == 0:
                hooks.on_validation(state.global_step, validation_loss())
            if hooks.checkpoint is not None and train.checkpoint_every_steps and state.global_step % train.checkpoint_every_steps == 0:
                save_step_checkpoint(model, state, hooks.checkpoint)
        progress.close()

        # === End of epoch: validation, adapter, sample reply, early stopping ===
        number = state.epoch + 1
        val_loss = validation_loss()
        hooks.on_validation(state.global_step, val_loss)
        name = adapter_file_name(train, number)
        if hooks.staging is not None:
            save_lora(base.causal_lm, hooks.staging / name)
        # A distributed generate splits its batch over the replicas: one copy of the prompt per replica.
        # Across hosts, keras-hub cannot gather generate's output, so multi-host runs leave the sample out.
        reply = (generator.generate_text([sample_ids.tolist()] * distribution.batch_replicas())[0]
                 if distribution.process_count() == 1 else "")  # fmt: skip
        record = EpochRecord(
            epoch=number, train_loss=epoch_loss / max(epoch_tokens, 1), train_accuracy=epoch_correct / max(epoch_tokens, 1),
            val_loss=val_loss, adapter=name, sample_prompt=generator.detokenize(sample_ids.tolist()), sample_reply=reply,
            seconds=time.perf_counter() - epoch_started, global_step=state.global_step,
        )  # fmt: skip
        log.info("epoch %d: loss %.4f val_loss %.4f | sample: %s", number, record.train_loss, val_loss, reply)
        hooks.on_epoch(record)
        if val_loss < state.best_val_loss:
            state.best_val_loss, state.best_epoch, state.epochs_without_improvement = val_loss, number, 0
        else:
            state.epochs_without_improvement += 1
        state.epoch, state.step_in_epoch = number, 0
        if hooks.checkpoint is not None:
            save_step_checkpoint(model, state, hooks.checkpoint)  # an epoch counts as done only after its record
        if train.early_stopping_patience and state.epochs_without_improvement >= train.early_stopping_patience:
            log.info("early stopping after epoch %d: val_loss has not improved on epoch %d's %.4f for %d epoch(s)",
                     number, state.best_epoch, state.best_val_loss, state.epochs_without_improvement)  # fmt: skip
            break
    return state


# === Edge: files, MLflow, resume ===


@dataclass
class TrainingResult:
    run_id: str | None
    epochs: list[EpochRecord] = field(default_factory=list)
    adapter_dir: Path | None = None
    adapter: str | None = None  # the output adapter's file name (last epoch, or best with early stopping)

    @property
    def adapter_path(self) -> Path:
        return self.adapter_dir / self.adapter


def loss_curve_png(records: list[EpochRecord], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.2), dpi=120)
    epochs = [r.epoch for r in records]
    axis.plot(epochs, [r.train_loss for r in records], marker="o", label="train_loss")
    axis.plot(epochs, [r.val_loss for r in records], marker="o", label="val_loss")
    axis.set_xlabel("epoch")
    axis.set_ylabel("loss (response tokens)")
    axis.set_xticks(epochs)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _backbone_config(params: Params) -> dict[str, Any]:
    """The base's backbone arguments, to check a model-parallel mesh against before loading."""
    pointer = gemma.read_base_pointer(params.model.base_dir)
    return distribution.preset_backbone_config(params.model.base_dir / pointer["path"])  # an absolute path stays as is


def run(params: Params, extra_tags: dict[str, str] | None = None) -> TrainingResult:
    """The whole stage: load, train with tracking, then swap the finished adapters into `train.out_dir`."""
    import mlflow

    train = params.train
    checkpoint_dir = train.checkpoint_dir
    staging = checkpoint_dir / STAGING_DIR
    train_split, validation_split = (TokenizedSplit.load(params.tokenize.split_path(split)) for split in SPLITS)
    version = data_version(list(params.data.split_paths.values())).md5
    # Set before loading, so from_preset lays every variable out on the device mesh.
    distribution.apply(train, _backbone_config(params) if train.distribution == "model" else None)
    base = gemma.load_base(params.model.base_dir, precision=train.precision)
    if not distribution.is_chief():
        # A multi-host run: this process trains in lockstep with process 0, which alone writes
        # adapters, MLflow records and DVC outputs, and keeps the resume state.
        fit_lora(base, train_split, validation_split, train)
        return TrainingResult(run_id=None)
    staging.mkdir(parents=True, exist_ok=True)

    tracking.setup(params.tracking.experiment)
    run_id_file = checkpoint_dir / RUN_ID_FILE
    resumed_run = run_id_file.read_text().strip() if run_id_file.exists() else None
    result = TrainingResult(run_id=None)
    history_path = staging / HISTORY_FILE
    if resumed_run and history_path.exists():
        result.epochs = [EpochRecord(**r) for r in json.loads(history_path.read_text())]
        log.info("resuming MLflow run %s after epoch %d", resumed_run, len(result.epochs))

    with mlflow.start_run(run_id=resumed_run, run_name=None if resumed_run else tracking.run_name(params, version),
                          log_system_metrics=params.tracking.system_metrics) as run:  # fmt: skip
        result.run_id = run.info.run_id
        atomic.write_text(run_id_file, run.info.run_id)
        if not resumed_run:
            tracking.log_all_params(params)
            mlflow.set_tags({**tracking.run_tags(params, version), **(extra_tags or {})})
            mlflow.log_dict({"examples": len(train_split), "validation_examples": len(validation_split)}, "data/sizes.json")

        def on_step(step: StepLog) -> None:
            mlflow.log_metrics({"train_loss": step.train_loss, "learning_rate": step.learning_rate,
                                "tokens_per_second": step.tokens_per_second}, step=step.global_step)  # fmt: skip

        def on_validation(global_step: int, val_loss: float) -> None:
            mlflow.log_metric("val_loss", val_loss, step=global_step)

        def on_epoch(record: EpochRecord) -> None:
            # A kill between this record and the checkpoint reruns the epoch's end: replace, never duplicate.
            result.epochs = [r for r in result.epochs if r.epoch < record.epoch] + [record]
            atomic.write_json(history_path, [asdict(r) for r in result.epochs])
            mlflow.log_metrics({"epoch_train_loss": record.train_loss, "epoch_train_accuracy": record.train_accuracy,
                                "epoch_val_loss": record.val_loss, "epoch_seconds": record.seconds}, step=record.epoch)  # fmt: skip
            mlflow.log_artifact(str(staging / record.adapter), artifact_path=tracking.ADAPTER_ARTIFACTS)
            mlflow.log_text(f"PROMPT:\n{record.sample_prompt}\n\nREPLY:\n{record.sample_reply}\n", f"samples/epoch_{record.epoch}.txt")

        # Step checkpoints are per process: a multi-host run resuming its processes at different
        # steps would break their lockstep, so only a single-process run keeps resume state.
        checkpoint = checkpoint_dir / STEP_CHECKPOINT if distribution.process_count() == 1 else None
        hooks = Hooks(on_step, on_validation, on_epoch, checkpoint=checkpoint, staging=staging)
        state = fit_lora(base, train_split, validation_split, train, hooks)
        result.adapter = adapter_file_name(train, state.best_epoch if train.early_stopping_patience else result.epochs[-1].epoch)

        curve = staging / "loss_curve.png"
        loss_curve_png(result.epochs, curve)
        mlflow.log_artifact(str(curve), artifact_path="plots")
        mlflow.log_table({"epoch": [r.epoch for r in result.epochs], "prompt": [r.sample_prompt for r in result.epochs],
                          "reply": [r.sample_reply for r in result.epochs]}, "samples/epoch_samples.json")  # fmt: skip
        if (base.path / "assets").is_dir():  # the tokenizer, so the run alone can rebuild prompts
            mlflow.log_artifacts(str(base.path / "assets"), artifact_path="base/assets")
        mlflow.log_dict(gemma.read_base_pointer(params.model.base_dir), "base/base.json")
        mlflow.set_tags({tracking.TAG_OUTPUT_ADAPTER: result.adapter, "maeum.best_epoch": str(state.best_epoch)})
        run_record = {"run_id": result.run_id, "data_version": version, "preset": params.model.preset,
                      "lora_rank": train.lora_rank, "lora_targets": train.lora_targets,
                      "epochs": [asdict(r) for r in result.epochs], "best_epoch": state.best_epoch,
                      "adapter": result.adapter}  # fmt: skip
        atomic.write_json(staging / train.run_file.name, run_record)

    # Only a finished training replaces the previous adapters.
    with atomic.atomic_dir(train.out_dir) as out:
        for item in staging.iterdir():
            shutil.copy2(item, out / item.name)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    result.adapter_dir = train.out_dir
    return result


def main(argv: list[str] | None = None) -> int:
    params = stage_params(__doc__, argv)
    distribution.initialize_cluster(distribution.cluster_from_env(os.environ))
    result = run(params)
    if result.run_id is None:
        print(f"train: process {distribution.process_index()} done; process 0 wrote the adapters and the MLflow run")
        return 0
    last = result.epochs[-1]
    print(f"train: MLflow run {result.run_id}; epoch {last.epoch} val_loss {last.val_loss:.4f}; adapter {result.adapter_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
