"""Prefect tasks of the train-lora flow: the stages of dvc.yaml run through DVC, and the registry steps.

The stage graph has one description, dvc.yaml. The flow asks DVC for the stages in dependency order
(`pipeline_stages`) and runs each as a task (`run_stage`) that asks DVC whether the stage is stale
(`dvc status`, against dvc.lock) and, if so, runs it with `dvc repro --single-item`. DVC's lock file
and run cache are the only cache: a dependency added to dvc.yaml changes what the flow reruns with
no other edit, and a stage whose inputs come back to an earlier version is restored from the run
cache instead of recomputed. Prefect adds what DVC does not have: retries where a retry can help,
logs in one place, the schedule, and the registry steps after evaluate.

Retries only where they can help: MLflow calls (a busy sqlite store, an unreachable server). A
failed stage (bad data, weights that cannot be had) needs a person, and a rerun of the flow
continues from the first stale stage.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from maeum import promotion, registry, tracking
from maeum.config import Params
from maeum.corpus import data_version

SUMMARY_ARTIFACT_KEY = "train-lora-summary"  # one key: the Artifacts page shows its history across runs
MLFLOW_RETRIES = 3
MLFLOW_RETRY_DELAYS = [2, 10, 30]  # seconds; a locked sqlite file or a restarting server
OUTPUT_TAIL = 4000  # characters of a failed stage's output kept in the error


class StageFailed(RuntimeError):
    """A DVC stage exited with an error; the message holds the end of its output (the file, record and rule)."""


# === The graph, from DVC ===


def pipeline_stages(repo_dir: Path | str = ".") -> list[str]:
    """The stages of dvc.yaml, dependencies first (ties in alphabetical order, so runs are reproducible)."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(repo_dir)) as repo:
        graph = repo.index.graph  # an edge (a, b): stage a depends on stage b
        order = nx.lexicographical_topological_sort(graph.reverse(copy=True), key=lambda stage: stage.addressing)
        return [stage.addressing for stage in order]


def downstream_of(stage: str, repo_dir: Path | str = ".") -> list[str]:
    """`stage` and every stage that depends on it, directly or not (what `force` reruns)."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(repo_dir)) as repo:
        graph = repo.index.graph
        (node,) = [s for s in graph.nodes if s.addressing == stage]
        return sorted({node.addressing, *(s.addressing for s in nx.ancestors(graph, node))})


def stage_changes(stage: str, repo_dir: Path | str = ".") -> dict[str, Any]:
    """What DVC finds changed for one stage (empty when it is up to date with dvc.lock)."""
    from dvc.repo import Repo

    with Repo(str(repo_dir)) as repo:
        return repo.status(targets=[stage]).get(stage, {})


def _dvc_environment() -> dict[str, str]:
    from prefect.runtime import flow_run

    # dvc.yaml's commands call `python`: make it this interpreter, whatever PATH the worker has.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if flow_run.id:  # the train stage tags its MLflow run with it (maeum.tracking.run_tags)
        env[tracking.FLOW_RUN_ENV] = str(flow_run.id)
    return env


@task(name="stage", task_run_name="{stage}")
def run_stage(stage: str, force: bool = False) -> dict[str, Any]:
    """Runs one dvc.yaml stage through DVC if it is stale (or `force`); returns whether it ran and why."""
    logger = get_run_logger()
    changes = stage_changes(stage)
    if not changes and not force:
        logger.info("%s: up to date with dvc.lock, not run", stage)
        return {"stage": stage, "ran": False}
    logger.info("%s: %s", stage, "forced" if force and not changes else f"stale: {json.dumps(changes, ensure_ascii=False)[:500]}")
    command = [sys.executable, "-m", "dvc", "repro", "--single-item", *(["--force"] if force else []), stage]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_dvc_environment())
    lines = []
    for line in process.stdout:
        lines.append(line)
        logger.info("%s | %s", stage, line.rstrip())
    if process.wait() != 0:
        raise StageFailed(f"stage {stage} failed (dvc repro exit {process.returncode}):\n{''.join(lines)[-OUTPUT_TAIL:]}")
    return {"stage": stage, "ran": True, "seconds": round(time.perf_counter() - started, 1)}


# === Retry conditions ===


def _error(state: Any) -> BaseException | None:
    data = getattr(state, "data", None)
    return data if isinstance(data, BaseException) else None


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retries MLflow calls only for connection trouble or a busy store."""
    error = _error(state)
    return error is None or registry.is_transient(error)


MLFLOW_TASK = dict(retries=MLFLOW_RETRIES, retry_delay_seconds=MLFLOW_RETRY_DELAYS, retry_condition_fn=retry_if_transient)


# === Registry tasks ===


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


@task(name="find-champion", **MLFLOW_TASK)
def find_champion(model_name: str) -> promotion.Champion | None:
    champion = registry.get_champion(model_name)
    if champion is None:
        get_run_logger().info("%s has no champion yet", model_name)
    else:
        get_run_logger().info("champion: %s v%s (data %s)", model_name, champion.version, champion.data_version)
    return champion


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Evaluated:
    """What train and evaluate left on disk for the registry steps."""

    run: dict[str, Any]  # train.run_file
    metrics: dict[str, float]  # evaluate's three metrics files, merged


@task(name="read-outputs")
def read_outputs(params: Params) -> Evaluated:
    evaluate = params.evaluate
    metrics = {**read_json(evaluate.metrics_file), **read_json(evaluate.generation_file)}
    metrics.update({k: v for k, v in read_json(evaluate.safety_file).items() if isinstance(v, (int, float))})
    return Evaluated(read_json(params.train.run_file), metrics)


def _logged_run(run_id: str) -> str:
    """The run that holds this training's records here: the training run, or evaluate's run linked to it."""
    from mlflow.exceptions import MlflowException

    store = registry.client()
    try:
        store.get_run(run_id)
        return run_id
    except MlflowException:
        linked = store.search_runs(store.search_experiments(), f"tags.`maeum.training_run_id` = '{run_id}'",
                                   order_by=["attributes.start_time DESC"], max_results=1)  # fmt: skip
        if not linked:
            raise
        return linked[0].info.run_id


def card_facts(params: Params, outputs: Evaluated, trained_on: Fingerprint, version_note: str) -> dict[str, Any]:
    sizes_file = params.tokenize.stats_file
    sizes = read_json(sizes_file) if Path(sizes_file).is_file() else {}
    return {
        "MLflow run": f"`{outputs.run['run_id']}`", "base": f"`{params.model.preset}`",
        "data version": f"`{trained_on.data_version}`",
        "training examples": sizes.get("train", {}).get("examples", "?"),
        "validation examples": sizes.get("validation", {}).get("examples", "?"),
        "LoRA": f"rank {params.train.lora_rank} on {params.train.lora_targets}",
        "recipe": f"lr {params.train.learning_rate:g} ({params.train.lr_schedule}), {params.train.epochs} epochs, "
                  f"batch {params.train.batch_size} x {params.train.gradient_accumulation_steps}",
        "adapter": f"`{outputs.run['adapter']}` (best epoch {outputs.run.get('best_epoch')})",
        "params hash": f"`{trained_on.params_hash}`", "status": version_note,
    }  # fmt: skip


@task(name="register", **MLFLOW_TASK)
def register(params: Params, outputs: Evaluated, trained_on: Fingerprint) -> tuple[str, str]:
    """Logs the pyfunc model into the training's run and registers it; returns (version, the run it is logged in)."""
    name = params.tracking.registered_model
    run_id = outputs.run["run_id"]
    logged_in = _logged_run(run_id)
    samples = _samples(params)
    card = promotion.model_card(name, "?", card_facts(params, outputs, trained_on, "registered"), outputs.metrics, None, samples)
    model_uri = registry.log_reply_model(logged_in, params, params.train.out_dir / outputs.run["adapter"], card)
    tags = {tracking.TAG_DATA_VERSION: trained_on.data_version, tracking.TAG_PARAMS_HASH: trained_on.params_hash,
            "maeum.val_bpc": repr(float(outputs.metrics["val_bpc_tuned"]))}  # fmt: skip
    version = registry.register(model_uri, name, run_id, tags, card.replace("v?", "v", 1))
    get_run_logger().info("registered %s v%s from MLflow run %s (%s)", name, version, run_id, model_uri)
    return version, logged_in


def _samples(params: Params, count: int = 5) -> list[dict[str, str]]:
    """A few of evaluate's generated replies, for the model card."""
    import pandas as pd

    examples = pd.read_parquet(params.evaluate.examples_file, columns=["prompt", "reference", "reply_tuned"])
    examples = examples[examples["prompt"] != ""].head(count)
    return [{"prompt": row.prompt, "reference": row.reference, "reply": row.reply_tuned} for row in examples.itertuples()]


@dataclass(frozen=True)
class Rescored:
    """The champion on the challenger's data, and what it cost."""

    version: str
    measured: promotion.Measured
    nll: list[float]
    seconds: float


@task(name="rescore-champion", **MLFLOW_TASK)
def rescore_champion(params: Params, champion: promotion.Champion) -> Rescored:
    """Loads the champion from the registry (its base, tokenizer, adapter and screen) and scores it on this run's data."""
    import pandas as pd

    from maeum.emotion import EmotionClassifier
    from maeum.safety import evaluation
    from maeum.scorecard import score_model

    started = time.perf_counter()
    name = params.tracking.registered_model
    loaded = registry.load_version(name, champion.version)
    examples = pd.read_parquet(params.preprocess.split_path("validation"))
    card = score_model(loaded.model, examples, params.train.sequence_length, None, params.evaluate.num_generations,
                       params.evaluate.max_new_tokens, EmotionClassifier.load(params.emotion.model_dir),
                       f"champion v{champion.version}")  # fmt: skip
    safety, _ = evaluation.screen_report(loaded.screen, evaluation.read_examples(params.safety.heldout_file),
                               evaluation.read_examples(params.safety.replies_heldout_file, evaluation.REPLY_LABELS))  # fmt: skip
    seconds = time.perf_counter() - started
    get_run_logger().info("champion v%s re-scored on this data in %.1f s: val_bpc %.4f", champion.version, seconds,
                          card.metrics["val_bpc"])  # fmt: skip
    return Rescored(champion.version, promotion.Measured(card.metrics["val_bpc"], card.metrics, safety, champion.data_version),
                    card.scores.nll.tolist(), seconds)  # fmt: skip


@task(name="decide")
def decide(params: Params, outputs: Evaluated, rescored: Rescored | None) -> promotion.Promotion:
    """The promotion rule (`maeum.promotion.decide_promotion`) on the challenger, its base and the re-scored champion."""
    import numpy as np
    import pandas as pd

    from maeum.scorecard import paired_bootstrap

    metrics = outputs.metrics
    generation = {key[: -len("_tuned")]: value for key, value in metrics.items() if key.endswith("_tuned")}
    safety = {key: value for key, value in metrics.items() if key.startswith("safety_")}
    challenger = promotion.Measured(metrics["val_bpc_tuned"], generation, safety, outputs.run.get("data_version"))
    bootstrap = None
    if rescored is not None:
        examples = pd.read_parquet(params.evaluate.examples_file)
        bootstrap = paired_bootstrap(examples["nll_tuned"].to_numpy(), np.asarray(rescored.nll), examples["characters"].to_numpy(),
                                     examples["talk_id"].astype(str).to_numpy(), params.promotion.bootstrap_samples,
                                     params.promotion.seed)  # fmt: skip
    evidence = promotion.Evidence(challenger, metrics["val_bpc_base"], rescored.measured if rescored else None,
                                  rescored.version if rescored else None, bootstrap)  # fmt: skip
    decision = promotion.decide_promotion(evidence, params.promotion)
    get_run_logger().info("%s: %s", "promote" if decision.promote else "keep the champion", decision.reason)
    return decision


@task(name="promote", **MLFLOW_TASK)
def apply_decision(params: Params, outputs: Evaluated, trained_on: Fingerprint, version: str, logged_in: str,
                   decision: promotion.Promotion, rescored: Rescored | None, flow_run: str | None) -> str:  # fmt: skip
    """Moves `champion` (auto mode) or `challenger` (manual mode) and records the decision everywhere; returns the outcome."""
    name = params.tracking.registered_model
    store = registry.client()
    by = f"train-lora flow run {flow_run}" if flow_run else "train-lora flow"
    if not decision.promote:
        outcome = "kept"
    elif params.promotion.mode == "auto":
        registry.promote_version(name, version, by=by, reason=decision.reason)
        outcome = "promoted"
    else:
        registry.move_alias(name, registry.CHALLENGER_ALIAS, version, by, decision.reason, action="nominate")
        outcome = "challenger"
    store.set_model_version_tag(name, version, registry.TAG_PROMOTED, str(outcome == "promoted").lower())
    store.set_tag(logged_in, registry.TAG_PROMOTION, outcome)
    store.set_tag(logged_in, registry.TAG_PROMOTION_REASON, decision.reason[:5000])
    store.log_metric(logged_in, registry.METRIC_PROMOTED, float(outcome == "promoted"))
    store.log_dict(logged_in, decision.as_dict(), "promotion/decision.json")
    if rescored is not None:
        store.log_metric(logged_in, registry.METRIC_CHAMPION_BPC, rescored.measured.val_bpc)
        store.log_metric(logged_in, "champion_rescore_seconds", rescored.seconds)
        store.set_tag(logged_in, "maeum.champion_data_version", rescored.measured.data_version or "")
    card = promotion.model_card(name, version, card_facts(params, outputs, trained_on, outcome), outputs.metrics, decision,
                                _samples(params))  # fmt: skip
    registry.update_card(name, version, card)
    store.log_text(logged_in, card, f"{registry.MODEL_NAME_IN_RUN}_card/{registry.CARD_ARTIFACT}")  # the card as decided
    get_run_logger().info("%s v%s: %s (%s)", name, version, outcome, decision.reason)
    return outcome


@task(name="report")
def report(outcome: dict[str, Any]) -> None:
    """The run's summary as a Prefect markdown artifact (key `train-lora-summary`)."""
    create_markdown_artifact(markdown=summary_markdown(outcome), key=SUMMARY_ARTIFACT_KEY,
                             description=f"train-lora: {outcome['status']}")  # fmt: skip


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else "-" if value is None else str(value)


def summary_markdown(outcome: dict[str, Any]) -> str:
    """Markdown for the artifact: status, stages, MLflow run, the promotion decision and its checks, metrics."""
    lines = [f"# train-lora: {outcome['status']}", "", f"**{outcome['reason']}**", "", "| run | |", "|---|---|"]
    for label, key in (("MLflow run", "run_id"), ("registered version", "model_version"), ("outcome", "promotion_outcome"),
                       ("champion", "champion_version"), ("data version", "data_version"),
                       ("champion's data version", "champion_data_version"), ("params hash", "params_hash"),
                       ("tracking URI", "tracking_uri")):  # fmt: skip
        if outcome.get(key) is not None:
            value = outcome[key]
            lines.append(f"| {label} | `{value}` |" if isinstance(value, str) else f"| {label} | {value} |")
    if outcome.get("stages"):
        lines += ["", "## Stages (dvc.yaml)", "", "| stage | ran |", "|---|---|"]
        lines += [f"| {s['stage']} | {'yes, ' + str(s.get('seconds')) + ' s' if s['ran'] else 'up to date'} |" for s in outcome["stages"]]
    if outcome.get("promotion"):
        decision = outcome["promotion"]
        lines += ["", "## Promotion", "", "| | val_bpc (this run's validation data) |", "|---|---|",
                  f"| challenger | {_number(decision['challenger_bpc'])} |",
                  f"| champion {('v' + decision['champion_version']) if decision['champion_version'] else '(none)'}, re-scored | "
                  f"{_number(decision['champion_bpc'])} |", "", decision["reason"], ""]  # fmt: skip
        lines += [f"- {'✓' if c['passed'] else '✗'} **{c['name']}**: {c['detail']}" for c in decision["checks"]]
    if outcome.get("metrics"):
        lines += ["", "## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {_number(value)} |" for name, value in outcome["metrics"].items()]
    return "\n".join(lines) + "\n"
