"""Prefect tasks around the pipeline stages: the same `run` functions `dvc repro` calls.

Each task is a thin edge: it calls `tasks.<stage>.run(params)` (or `maeum.registry`), logs what a
person looking at the Prefect UI needs, and declares its retry and cache policy:

- retries only where a retry can help: MLflow calls (a busy sqlite store, an unreachable
  server) and the model stage's download; never a `ValidationFailed` or `WeightsUnavailable`,
  which say the input or the machine is wrong and need a person.
- the deterministic data stages (preprocess, model, tokenize) are cached by Prefect with
  `INPUTS + TASK_SOURCE`. Their one cache input is a fingerprint of what `dvc.yaml` declares for
  the stage: the raw data version (or the upstream stages' fingerprints), the stage's dotted
  params and the source of its modules. `params` itself is excluded from the key, so changing
  `train.lora_rank` does not rebuild the tokenized data.
- these stages write files that later stages read, so a cache hit alone is not enough: the cached
  result records an MD5 of the outputs as the stage left them, and `run_data_stage` reruns the
  stage (`refresh_cache=True`) when the files on disk are missing or differ (deleted by hand,
  `dvc checkout` of another version, a run on other data in the same folder).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import INPUTS, TASK_SOURCE

from maeum import gemma, registry, tracking
from maeum.config import Params
from maeum.corpus import data_version

SUMMARY_ARTIFACT_KEY = "train-lora-summary"  # one key: the Artifacts page shows its history across runs
MLFLOW_RETRIES = 3
MLFLOW_RETRY_DELAYS = [2, 10, 30]  # seconds; a locked sqlite file or a restarting server
DOWNLOAD_RETRIES = 2
DOWNLOAD_RETRY_DELAY = 60  # seconds; transient Kaggle / network errors

DATA_STAGE_CACHE = (INPUTS - "params") + TASK_SOURCE


# === What a data stage depends on (mirrors dvc.yaml; tests/flows checks they agree) ===


@dataclass(frozen=True)
class DataStage:
    code: tuple[str, ...]  # modules whose source changes the outputs (dvc.yaml deps)
    params: tuple[str, ...]  # dotted params sections or keys (dvc.yaml params)
    upstream: tuple[str, ...]  # stages whose outputs it reads; none: it reads the raw data


DATA_STAGES = {
    "preprocess": DataStage(("tasks.preprocess", "maeum.corpus", "maeum.dialogue"), ("data", "preprocess"), ()),
    "model": DataStage(("tasks.model", "maeum.gemma"), ("model", "train.jit_compile"), ("preprocess",)),
    "tokenize": DataStage(("tasks.tokenize", "maeum.dialogue"), ("tokenize", "train.sequence_length", "train.loss_on"), ("preprocess", "model")),
}


def stage_outputs(stage: str, params: Params) -> list[Path]:
    """The files and folders a data stage writes (dvc.yaml outs and metrics)."""
    return {
        "preprocess": [params.preprocess.out_dir],
        "model": [params.model.base_dir],
        "tokenize": [params.tokenize.out_dir, params.tokenize.stats_file],
    }[stage]


def _md5_json(value: Any) -> str:
    return hashlib.md5(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def code_digest(modules: tuple[str, ...]) -> str:
    """MD5 over the source files of `modules` (found by import name, so any working directory works)."""
    digest = hashlib.md5()
    for name in modules:
        digest.update(name.encode())
        digest.update(Path(importlib.util.find_spec(name).origin).read_bytes())
    return digest.hexdigest()


def stage_params(flat: dict[str, Any], selectors: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in flat.items() if any(k == s or k.startswith(s + ".") for s in selectors)}


def stage_inputs(params: Params, raw_data_version: str) -> dict[str, str]:
    """The cache input (`inputs_md5`) of each data stage: what it reads, chained through its upstream stages."""
    flat = params.as_flat_dict()
    inputs: dict[str, str] = {}
    for name, stage in DATA_STAGES.items():
        inputs[name] = _md5_json({
            "stage": name,
            "inputs": [inputs[u] for u in stage.upstream] or [raw_data_version],
            "params": stage_params(flat, stage.params),
            "code": code_digest(stage.code),
        })  # fmt: skip
    return inputs


def outputs_digest(paths: list[Path]) -> str:
    """MD5 over every file under `paths` (name and content); a missing path counts as such."""
    entries = []
    for root in paths:
        root = Path(root)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root] if root.is_file() else []
        if not files:
            entries.append([str(root), "missing"])
        for path in files:
            entries.append([str(path), hashlib.md5(path.read_bytes()).hexdigest()])
    return _md5_json(entries)


@dataclass(frozen=True)
class StageOutput:
    """A data stage's return value and the digest of the files it left (kept in Prefect's result store)."""

    summary: Any
    outputs_md5: str


def _finish(stage: str, params: Params, summary: Any) -> StageOutput:
    get_run_logger().info("%s: %s", stage, summary)
    return StageOutput(summary=summary, outputs_md5=outputs_digest(stage_outputs(stage, params)))


def run_data_stage(stage_task: Any, params: Params, inputs: dict[str, str]) -> StageOutput:
    """Runs a cached data stage; reruns it if a cache hit's outputs are no longer on disk as it left them."""
    name = stage_task.name
    output = stage_task(params, inputs[name])
    if output.outputs_md5 != outputs_digest(stage_outputs(name, params)):
        get_run_logger().warning("%s: cached result, but its outputs on disk are missing or changed; running it again", name)
        output = stage_task.with_options(refresh_cache=True)(params, inputs[name])
    return output


# === Retry conditions ===


def _error(state: Any) -> BaseException | None:
    data = getattr(state, "data", None)
    return data if isinstance(data, BaseException) else None


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retries MLflow calls only for connection trouble or a busy store."""
    error = _error(state)
    return error is None or registry.is_transient(error)


def retry_unless_unavailable(task: Any, task_run: Any, state: Any) -> bool:
    """Retries the model stage except when the weights cannot be had (credentials, licence, offline)."""
    return not isinstance(_error(state), gemma.WeightsUnavailable)


# === Tasks ===


@dataclass(frozen=True)
class Fingerprint:
    data_version: str
    params_hash: str


@task(name="fingerprint")
def fingerprint(params: Params) -> Fingerprint:
    """What a trained model would depend on: MD5 of the raw corpus and the hash of the parameters."""
    result = Fingerprint(data_version(list(params.data.split_paths.values())).md5, tracking.params_hash(params))
    get_run_logger().info("data version %s, params hash %s", result.data_version, result.params_hash)
    return result


@task(name="find-champion", retries=MLFLOW_RETRIES, retry_delay_seconds=MLFLOW_RETRY_DELAYS,
      retry_condition_fn=retry_if_transient)  # fmt: skip
def find_champion(model_name: str) -> registry.Champion | None:
    champion = registry.get_champion(model_name)
    if champion is None:
        get_run_logger().info("%s has no champion yet", model_name)
    else:
        get_run_logger().info("champion: %s v%s (val_loss_tuned %s, data %s)", model_name, champion.version,
                              champion.val_loss_tuned, champion.data_version)  # fmt: skip
    return champion


@task(name="validate")
def validate(params: Params) -> dict[str, Any]:
    """Not cached: the gate before any training, cheap, and its report is wanted every run."""
    from tasks import validate as stage

    report = stage.run(params)
    get_run_logger().info("validate: %s dialogues passed (data %s)", report["counts"]["dialogues_checked"], report["data_version"])
    return report["counts"]


@task(name="preprocess", cache_policy=DATA_STAGE_CACHE, persist_result=True)
def preprocess(params: Params, inputs_md5: str) -> StageOutput:
    from tasks import preprocess as stage

    return _finish("preprocess", params, stage.run(params))


@task(name="model", cache_policy=DATA_STAGE_CACHE, persist_result=True, retries=DOWNLOAD_RETRIES,
      retry_delay_seconds=DOWNLOAD_RETRY_DELAY, retry_condition_fn=retry_unless_unavailable)  # fmt: skip
def model(params: Params, inputs_md5: str) -> StageOutput:
    from tasks import model as stage

    return _finish("model", params, stage.run(params))


@task(name="tokenize", cache_policy=DATA_STAGE_CACHE, persist_result=True)
def tokenize(params: Params, inputs_md5: str) -> StageOutput:
    from tasks import tokenize as stage

    return _finish("tokenize", params, stage.run(params))


@task(name="train")
def train(params: Params, flow_run_id: str | None) -> Any:
    """Not retried: a crash resumes from the last finished epoch on the next run (BackupAndRestore)."""
    from tasks import train as stage

    result = stage.run(params, extra_tags={tracking.TAG_PREFECT_FLOW_RUN: flow_run_id} if flow_run_id else None)
    last = result.epochs[-1]
    get_run_logger().info("MLflow run %s: %d epoch(s), last val_loss %.4f, adapter %s", result.run_id, len(result.epochs),
                          last.val_loss, result.last_adapter)  # fmt: skip
    return result


@task(name="evaluate")
def evaluate(params: Params) -> dict[str, Any]:
    from tasks import evaluate as stage

    metrics = stage.run(params)
    get_run_logger().info("evaluate: val_loss base %.4f -> tuned %.4f, chrF %.2f", metrics["val_loss_base"],
                          metrics["val_loss_tuned"], metrics["chrf"])  # fmt: skip
    return metrics


@task(name="register", retries=MLFLOW_RETRIES, retry_delay_seconds=MLFLOW_RETRY_DELAYS, retry_condition_fn=retry_if_transient)
def register(params: Params, run_id: str, adapter: Path, trained_on: Fingerprint, val_loss_tuned: float) -> str:
    """Logs the pyfunc model into the training run and registers it; returns the new version."""
    model_uri = registry.log_reply_model(run_id, params, adapter)
    number = registry.register(model_uri, params.tracking.registered_model, run_id, trained_on.data_version,
                               trained_on.params_hash, val_loss_tuned)  # fmt: skip
    get_run_logger().info("registered %s v%s from MLflow run %s (%s)", params.tracking.registered_model, number, run_id, model_uri)
    return number


@task(name="promote", retries=MLFLOW_RETRIES, retry_delay_seconds=MLFLOW_RETRY_DELAYS, retry_condition_fn=retry_if_transient)
def promote(params: Params, version: str, run_id: str, val_loss_tuned: float) -> registry.Promotion:
    decision = registry.promote(params.tracking.registered_model, version, run_id, val_loss_tuned)
    get_run_logger().info("v%s %s: %s", version, "is the new champion" if decision.promote else "stays a challenger",
                          decision.reason)  # fmt: skip
    return decision


@task(name="report")
def report(outcome: dict[str, Any]) -> None:
    """The run's summary as a Prefect markdown artifact (key `train-lora-summary`)."""
    create_markdown_artifact(markdown=summary_markdown(outcome), key=SUMMARY_ARTIFACT_KEY,
                             description=f"train-lora: {outcome['status']}")  # fmt: skip


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else "-" if value is None else str(value)


def summary_markdown(outcome: dict[str, Any]) -> str:
    """Markdown for the artifact: status, MLflow run, metrics and the promotion decision."""
    lines = [f"# train-lora: {outcome['status']}", "", f"**{outcome['reason']}**", "",
             "| run | |", "|---|---|"]  # fmt: skip
    for label, key in (("MLflow run", "run_id"), ("registered version", "model_version"), ("promoted", "promoted"),
                       ("champion", "champion_version"), ("data version", "data_version"), ("params hash", "params_hash"),
                       ("tracking URI", "tracking_uri")):  # fmt: skip
        if outcome.get(key) is not None:
            value = outcome[key]
            lines.append(f"| {label} | `{value}` |" if isinstance(value, str) else f"| {label} | {value} |")
    if outcome.get("promotion"):
        promotion = outcome["promotion"]
        before = f"v{promotion['champion_version']}" if promotion["champion_version"] else "none"
        lines += ["", "## Promotion", "", "| | val_loss_tuned |", "|---|---|",
                  f"| this run | {_number(promotion['challenger_loss'])} |",
                  f"| champion before ({before}) | {_number(promotion['champion_loss'])} |",
                  "", promotion["reason"]]  # fmt: skip
    if outcome.get("metrics"):
        lines += ["", "## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {_number(value)} |" for name, value in outcome["metrics"].items()]
    return "\n".join(lines) + "\n"
