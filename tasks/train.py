"""train stage: LoRA fine-tuning of the base with the original recipe's optimizer, tracked in MLflow.

`GemmaCausalLM` + `backbone.enable_lora(rank)`, AdamW without decay on bias/scale, and a loss
averaged over the weighted (response) tokens only. After each epoch: the LoRA weights as
`<name>_<rank>_epoch<N>.lora.h5`, the validation loss, and a sample reply to the first
validation prompt, all logged to the MLflow run. A killed run resumes from its last finished
epoch (Keras `BackupAndRestore`) and continues the same MLflow run.

    python -m tasks.train [--params params.yaml]
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maeum import atomic, batching, distribution, gemma, tracking
from maeum.config import Params, TrainParams
from maeum.corpus import data_version
from maeum.runtime import stage_params
from tasks.tokenize import TokenizedSplit

log = logging.getLogger(__name__)

RUN_FILE = "run.json"  # in train.out_dir: the MLflow run id and per-epoch history, read by evaluate
HISTORY_FILE = "history.json"
RUN_ID_FILE = "mlflow_run_id"  # in train.checkpoint_dir, so a resumed run logs into the same MLflow run
STAGING_DIR = "lora"  # in train.checkpoint_dir: per-epoch adapters before the finished set replaces out_dir
NO_DECAY = ["bias", "scale"]  # as in the original recipe: norms' scales and biases are not decayed


# === Core: batches, model, fit ===


def boundaries_for(train: TrainParams) -> list[int]:
    """Bucket lengths for `train.padding`: the original recipe's one fixed length, or the buckets (capped)."""
    if train.padding == "fixed":
        return [train.sequence_length]
    return sorted({b for b in train.bucket_boundaries if b < train.sequence_length} | {train.sequence_length})


class EpochClock:
    """Tells the batch generator which epoch it serves, so each epoch's order is a function of (seed, epoch).

    Keras calls `on_epoch_begin` before it opens the epoch's iterator; a run resumed at epoch 3
    therefore sees the same order at epoch 3 as an uninterrupted run.
    """

    def __init__(self):
        self.epoch = 0


def batch_dataset(split: TokenizedSplit, train: TrainParams, clock: EpochClock | None) -> Any:
    """A `tf.data.Dataset` of (x, y, sample_weight) batches; reshuffled every epoch when `clock` is given.

    Args:
        split: tokenized examples.
        train: padding, boundaries, batch size, seed.
        clock: the current epoch for shuffling; None gives a fixed order (validation).
    """
    import tensorflow as tf

    lengths = split.lengths - 1  # inputs are every id but the last
    boundaries = boundaries_for(train)
    batch_count = len(batching.plan_batches(lengths, boundaries, train.batch_size))

    def batches():
        rng = np.random.default_rng([train.seed, clock.epoch]) if clock is not None and train.shuffle else None
        yield from batching.iterate_batches(split, batching.plan_batches(lengths, boundaries, train.batch_size, rng))

    # Every batch is full (plan_batches tops it up), so the batch size is static: Keras needs it to
    # split each global batch between the processes of a multi-host run.
    rows = train.batch_size
    signature = (
        {"token_ids": tf.TensorSpec((rows, None), tf.int32), "padding_mask": tf.TensorSpec((rows, None), tf.bool)},
        tf.TensorSpec((rows, None), tf.int32),
        tf.TensorSpec((rows, None), tf.float32),
    )
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
    return dataset.apply(tf.data.experimental.assert_cardinality(batch_count)).prefetch(2)


def compile_for_lora(causal_lm: Any, train: TrainParams) -> None:
    """Enables LoRA and compiles with the recipe's optimizer, loss and metric."""
    import keras

    causal_lm.backbone.enable_lora(rank=train.lora_rank)
    optimizer = keras.optimizers.AdamW(learning_rate=train.learning_rate, weight_decay=train.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
    causal_lm.compile(
        optimizer=optimizer,
        # The default reduction divides by every position, padding and prompt included, so the loss
        # would shrink as prompts grow; this one averages over the weighted (response) tokens.
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight"),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=train.jit_compile,
    )


def adapter_file_name(train: TrainParams, epoch: int) -> str:
    return f"{train.adapter_name}_{train.lora_rank}_epoch{epoch}.lora.h5"


def save_lora(causal_lm: Any, path: Path) -> None:
    """Saves LoRA weights atomically (keras-hub insists on the `.lora.h5` suffix, so the temp name keeps it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name[: -len('.lora.h5')]}.tmp.lora.h5")
    causal_lm.backbone.save_lora_weights(str(tmp))
    tmp.replace(path)


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    adapter: str
    sample_prompt: str
    sample_reply: str
    seconds: float


@dataclass
class TrainingResult:
    run_id: str | None
    epochs: list[EpochRecord] = field(default_factory=list)
    adapter_dir: Path | None = None

    @property
    def last_adapter(self) -> Path:
        return self.adapter_dir / self.epochs[-1].adapter


def _epoch_callback(base: gemma.LoadedBase, train: TrainParams, staging: Path | None, sample_prompt_ids: np.ndarray,
                    on_epoch: Any) -> Any:  # fmt: skip
    import keras

    generator = gemma.ReplyGenerator(base, prompt_budget=train.sequence_length, max_new_tokens=train.sample_max_new_tokens)
    sample_prompt = generator.detokenize(sample_prompt_ids.tolist())

    class EpochArtifacts(keras.callbacks.Callback):
        """After each epoch: adapter file, sample reply, and the epoch's record."""

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            number = epoch + 1
            name = adapter_file_name(train, number)
            if staging is not None:
                save_lora(base.causal_lm, staging / name)
            # A distributed generate splits its batch over the replicas: one copy of the prompt per replica.
            # Across hosts, keras-hub cannot gather generate's output, so multi-host runs leave the sample
            # out (the evaluate stage, one process, still generates).
            reply = (generator.generate_text([sample_prompt_ids.tolist()] * distribution.batch_replicas())[0]
                     if distribution.process_count() == 1 else "")  # fmt: skip
            record = EpochRecord(
                epoch=number, train_loss=float(logs["loss"]), train_accuracy=float(logs.get("accuracy", float("nan"))),
                val_loss=float(logs["val_loss"]), val_accuracy=float(logs.get("val_accuracy", float("nan"))),
                adapter=name, sample_prompt=sample_prompt, sample_reply=reply,
                seconds=time.perf_counter() - self.started,
            )  # fmt: skip
            log.info("epoch %d: loss %.4f val_loss %.4f | sample: %s", number, record.train_loss, record.val_loss, reply)
            on_epoch(record)

    return EpochArtifacts()


def fit_lora(
    base: gemma.LoadedBase,
    train_split: TokenizedSplit,
    validation_split: TokenizedSplit,
    train: TrainParams,
    staging: Path | None,
    on_epoch: Any = lambda record: None,
    backup_dir: Path | None = None,
) -> None:
    """Fine-tunes `base.causal_lm` in place with LoRA; writes per-epoch adapters into `staging`.

    Args:
        base: the loaded base model and tokenizer.
        train_split, validation_split: tokenized examples.
        train: the `train` section of params.yaml.
        staging: folder for the per-epoch `.lora.h5` files; None writes none (processes other than 0
            of a multi-host run).
        on_epoch: called with each finished epoch's `EpochRecord` (tracking hooks in here).
        backup_dir: BackupAndRestore folder; a rerun after a crash resumes from it.
    """
    import keras

    keras.utils.set_random_seed(train.seed)
    compile_for_lora(base.causal_lm, train)
    clock = EpochClock()
    track_epoch = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs=None: setattr(clock, "epoch", epoch))
    callbacks = [track_epoch, _epoch_callback(base, train, staging, validation_split.prompt(0), on_epoch)]
    if backup_dir is not None:
        # Last, so an epoch counts as done for a resume only after its adapter and record are written.
        callbacks.append(keras.callbacks.BackupAndRestore(backup_dir=str(backup_dir), delete_checkpoint=True))
    base.causal_lm.fit(
        batch_dataset(train_split, train, clock), validation_data=batch_dataset(validation_split, train, None),
        epochs=train.epochs, shuffle=False, callbacks=callbacks, verbose=2,  # batches are shuffled in batch_dataset
    )  # fmt: skip


# === Edge: files, MLflow, resume ===


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
    train_split = TokenizedSplit.load(params.tokenize.out_dir / "train.npz")
    validation_split = TokenizedSplit.load(params.tokenize.out_dir / "validation.npz")
    version = data_version(list(params.data.split_paths.values())).md5
    # Set before loading, so from_preset lays every variable out on the device mesh.
    distribution.apply(train, _backbone_config(params) if train.distribution == "model" else None)
    base = gemma.load_base(params.model.base_dir, precision=train.precision)
    if not distribution.is_chief():
        # A multi-host run: this process trains in lockstep with process 0, which alone writes
        # adapters, MLflow records and DVC outputs. No resume state either (see below).
        fit_lora(base, train_split, validation_split, train, staging=None)
        return TrainingResult(run_id=None)
    staging.mkdir(parents=True, exist_ok=True)
    # BackupAndRestore is per process; a multi-host run would resume its processes at different
    # epochs, so only a single-process run keeps resume state.
    backup_dir = checkpoint_dir / "backup" if distribution.process_count() == 1 else None

    tracking.setup(params.tracking.experiment)
    run_id_file = checkpoint_dir / RUN_ID_FILE
    resumed_run = run_id_file.read_text().strip() if run_id_file.exists() else None
    result = TrainingResult(run_id=None)
    history_path = staging / HISTORY_FILE
    if resumed_run and history_path.exists():
        result.epochs = [EpochRecord(**r) for r in json.loads(history_path.read_text())]
        log.info("resuming MLflow run %s after epoch %d", resumed_run, len(result.epochs))

    with mlflow.start_run(run_id=resumed_run, run_name=None if resumed_run else tracking.run_name(params, version)) as run:
        result.run_id = run.info.run_id
        atomic.write_text(run_id_file, run.info.run_id)
        if not resumed_run:
            tracking.log_all_params(params)
            mlflow.set_tags({**tracking.run_tags(params, version), **(extra_tags or {})})
            mlflow.log_dict({"examples": len(train_split), "validation_examples": len(validation_split)}, "data/sizes.json")

        def on_epoch(record: EpochRecord) -> None:
            # A kill between this record and the backup reruns the epoch: replace, never duplicate.
            result.epochs = [r for r in result.epochs if r.epoch < record.epoch] + [record]
            atomic.write_json(history_path, [vars(r) for r in result.epochs])
            mlflow.log_metrics({"train_loss": record.train_loss, "train_accuracy": record.train_accuracy,
                                "val_loss": record.val_loss, "val_accuracy": record.val_accuracy,
                                "epoch_seconds": record.seconds}, step=record.epoch)  # fmt: skip
            mlflow.log_artifact(str(staging / record.adapter), artifact_path="lora")
            mlflow.log_text(f"PROMPT:\n{record.sample_prompt}\n\nREPLY:\n{record.sample_reply}\n", f"samples/epoch_{record.epoch}.txt")

        fit_lora(base, train_split, validation_split, train, staging, on_epoch, backup_dir=backup_dir)

        curve = staging / "loss_curve.png"
        loss_curve_png(result.epochs, curve)
        mlflow.log_artifact(str(curve), artifact_path="plots")
        mlflow.log_table({"epoch": [r.epoch for r in result.epochs], "prompt": [r.sample_prompt for r in result.epochs],
                          "reply": [r.sample_reply for r in result.epochs]}, "samples/epoch_samples.json")  # fmt: skip
        if (base.path / "assets").is_dir():  # the tokenizer, so the run alone can rebuild prompts
            mlflow.log_artifacts(str(base.path / "assets"), artifact_path="base/assets")
        mlflow.log_dict(gemma.read_base_pointer(params.model.base_dir), "base/base.json")
        run_record = {"run_id": result.run_id, "data_version": version, "preset": params.model.preset,
                      "lora_rank": train.lora_rank, "epochs": [vars(r) for r in result.epochs],
                      "last_adapter": result.epochs[-1].adapter}  # fmt: skip
        atomic.write_json(staging / RUN_FILE, run_record)

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
    print(f"train: MLflow run {result.run_id}; epoch {last.epoch} val_loss {last.val_loss:.4f}; {result.last_adapter}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
