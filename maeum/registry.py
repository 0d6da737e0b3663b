"""The MLflow model registry: one servable model per training run, and the `champion` alias.

Every finished train+evaluate logs a pyfunc model into the *training's* MLflow run (base
preset reference or the tiny preset itself, its tokenizer, the last `.lora.h5`) and registers
it as a new version of `tracking.registered_model`. The alias `champion` moves to the new
version only when its `val_loss_tuned` is lower than the current champion's; the first version
becomes champion. Aliases, not the deprecated stages:

    mlflow.pyfunc.load_model("models:/maeum-lora@champion").predict(pd.DataFrame({"message": ["요즘 잠을 못 자요."]}))

The two decisions the `train-lora` flow makes (skip a run that would change nothing, promote a
better model) are pure functions here, tested without MLflow.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from maeum import gemma, tracking
from maeum.config import Params

log = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
MODEL_NAME_IN_RUN = "model"  # the logged model's name inside the training run
BASE_ARTIFACT = "base"  # the model stage's base_dir: base.json (+ the tiny preset folder)
ADAPTER_ARTIFACT = "adapter"  # the last epoch's .lora.h5
SAFETY_RULES_ARTIFACT = "safety_rules"  # the crisis screen's rules, as evaluated in this run
CONFIG_ARTIFACT = "config"  # serving.json: rank, history window, budgets (model_config would also become run params)

TAG_VAL_LOSS = "maeum.val_loss_tuned"  # on model versions: what promotion compares
TAG_RUN_ID = "maeum.run_id"
TAG_PROMOTED = "maeum.promoted"
TAG_PROMOTION = "maeum.promotion"  # on the run: promoted | kept, and why
TAG_PROMOTION_REASON = "maeum.promotion_reason"
METRIC_CHAMPION_LOSS = "champion_val_loss_tuned"  # on the run: the loss it was compared with
METRIC_PROMOTED = "promoted"

# MLflow error codes that say "try again later" (sqlite busy, server unreachable or overloaded).
TRANSIENT_MLFLOW_ERRORS = {"TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED"}
SERVING_PACKAGES = ("keras", "keras-hub", "tensorflow-cpu", "tensorflow-text", "sentencepiece", "numpy", "pandas")


# === Decisions (pure) ===


@dataclass(frozen=True)
class Champion:
    """The registered version the `champion` alias points at, with what it was trained on."""

    version: str
    run_id: str | None
    data_version: str | None
    params_hash: str | None
    val_loss_tuned: float | None


@dataclass(frozen=True)
class SkipDecision:
    skip: bool
    reason: str


def decide_skip(champion: Champion | None, data_version: str, params_hash: str, force: bool) -> SkipDecision:
    """Whether a training run would only reproduce the champion.

    Args:
        champion: the current champion, or None when there is none yet.
        data_version: MD5 of the raw corpus this run would train on.
        params_hash: `tracking.params_hash` of this run's parameters.
        force: train even when nothing changed.

    Returns:
        skip=True only when the champion was trained on the same data and parameters and force is off.
    """
    if force:
        return SkipDecision(False, "forced")
    if champion is None:
        return SkipDecision(False, "no champion yet")
    changed = [name for name, ours, theirs in (("data", data_version, champion.data_version),
                                               ("params", params_hash, champion.params_hash)) if ours != theirs]  # fmt: skip
    if changed:
        return SkipDecision(False, f"{' and '.join(changed)} changed since champion v{champion.version}")
    return SkipDecision(True, "nothing changed")


@dataclass(frozen=True)
class Promotion:
    promote: bool
    reason: str
    challenger_loss: float | None
    champion_loss: float | None
    champion_version: str | None


def decide_promotion(challenger_loss: float | None, champion: Champion | None) -> Promotion:
    """Whether a newly registered version should become champion: strictly lower val_loss_tuned wins.

    Args:
        challenger_loss: the new version's validation loss (None or NaN: evaluation failed).
        champion: the current champion, or None.

    Returns:
        The decision with both numbers, for logs and tags.
    """
    champion_loss = champion.val_loss_tuned if champion else None
    champion_version = champion.version if champion else None
    if challenger_loss is None or not math.isfinite(challenger_loss):
        return Promotion(False, "challenger has no valid val_loss_tuned", challenger_loss, champion_loss, champion_version)
    if champion is None:
        return Promotion(True, "first model: no champion yet", challenger_loss, None, None)
    if champion_loss is None or not math.isfinite(champion_loss):
        return Promotion(True, f"champion v{champion_version} has no valid val_loss_tuned", challenger_loss, champion_loss,
                         champion_version)  # fmt: skip
    if challenger_loss < champion_loss:
        return Promotion(True, f"val_loss_tuned {challenger_loss:.4f} < champion v{champion_version}'s {champion_loss:.4f}",
                         challenger_loss, champion_loss, champion_version)  # fmt: skip
    return Promotion(False, f"val_loss_tuned {challenger_loss:.4f} >= champion v{champion_version}'s {champion_loss:.4f}",
                     challenger_loss, champion_loss, champion_version)  # fmt: skip


def is_transient(error: BaseException) -> bool:
    """True for errors a retry can fix: connection trouble, timeouts, a busy or unavailable store."""
    from mlflow.exceptions import MlflowException

    if isinstance(error, MlflowException):
        return error.error_code in TRANSIENT_MLFLOW_ERRORS
    return isinstance(error, (ConnectionError, TimeoutError)) or type(error).__name__ in {"ConnectionError", "Timeout",
                                                                                          "OperationalError"}  # fmt: skip


# === The servable model ===


def _history(value: Any) -> list[tuple[str, str]]:
    """History as (role, text) pairs, from a JSON string or a list of pairs or {"role", "content"} dicts."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):
        value = json.loads(value)
    return [(t["role"], t["content"]) if isinstance(t, dict) else (t[0], t[1]) for t in value]


class ReplyModel(mlflow.pyfunc.PythonModel):
    """Base + LoRA adapter answering user messages exactly as `maeum chat` does (greedy).

    Each row is one chat turn through `maeum.chat.ChatSession`: the same prompt building and
    truncation as training, and the same crisis screening (a crisis message gets the crisis
    response, the model is not called).

    Input: a DataFrame with a `message` column and an optional `history` column (JSON list of
    `[role, text]` pairs or `{"role", "content"}` objects, role `user` or `model`).
    Output: one reply string per row.
    """

    def load_context(self, context):
        from tasks import safety

        config = json.loads(Path(context.artifacts[CONFIG_ARTIFACT]).read_text(encoding="utf-8"))
        self.max_history_turns = int(config["max_history_turns"])
        self.max_prompt_tokens = int(config["max_prompt_tokens"])
        self.rules = safety.load_rules(Path(context.artifacts[SAFETY_RULES_ARTIFACT]))
        self.base = gemma.load_base(Path(context.artifacts[BASE_ARTIFACT]))
        self.base.causal_lm.backbone.enable_lora(rank=int(config["lora_rank"]))
        self.base.causal_lm.backbone.load_lora_weights(context.artifacts[ADAPTER_ARTIFACT])
        self.generator = gemma.ReplyGenerator(self.base, prompt_budget=self.max_prompt_tokens,
                                              max_new_tokens=int(config["max_new_tokens"]))  # fmt: skip

    def predict(self, context, model_input: pd.DataFrame, params=None) -> list[str]:
        from maeum.chat import ChatSession

        frame = pd.DataFrame(model_input)
        histories = frame["history"] if "history" in frame else [None] * len(frame)
        replies = []
        for message, history in zip(frame["message"], histories):
            session = ChatSession(self.generator, self.base.tokenizer, self.max_history_turns, self.max_prompt_tokens,
                                   rules=self.rules, history=_history(history))  # fmt: skip
            replies.append(session.respond(str(message)).reply)
        return replies


def _signature() -> Any:
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "message"), ColSpec("string", "history", required=False)]),
        outputs=Schema([ColSpec("string")]),
    )


def _pip_requirements() -> list[str]:
    pins = [f"mlflow=={metadata.version('mlflow')}"]
    for package in SERVING_PACKAGES:
        try:
            pins.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return pins


def _base_artifact(base_dir: Path, staging: Path) -> Path:
    """The folder to ship as the base: the whole base_dir when the preset lives inside it (tiny),
    else only base.json, which points at the real preset on this machine (gigabytes stay put)."""
    pointer = gemma.read_base_pointer(base_dir)
    if not Path(pointer["path"]).is_absolute():
        return base_dir
    staging.mkdir(parents=True, exist_ok=True)
    shutil.copy2(base_dir / gemma.BASE_POINTER, staging / gemma.BASE_POINTER)
    return staging


def log_reply_model(run_id: str, params: Params, adapter: Path) -> str:
    """Logs the pyfunc model into the training's MLflow run; returns its model URI.

    Args:
        run_id: the run the train stage created.
        params: the run's parameters (base_dir, LoRA rank, prompt window and budget).
        adapter: the `.lora.h5` file to serve (the last epoch's).
    """
    import maeum
    import tasks
    from maeum import chat

    config = {
        "lora_rank": params.train.lora_rank,
        "max_history_turns": params.preprocess.max_history_turns,
        "max_prompt_tokens": chat.prompt_budget(params),
        "max_new_tokens": params.evaluate.max_new_tokens,
        "preset": params.model.preset,
    }
    tracking.setup(params.tracking.experiment)
    with tempfile.TemporaryDirectory() as staging, mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        # An input example would make MLflow load and run the model at log time; the signature is explicit.
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        config_file = Path(staging) / "serving.json"
        config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
        artifacts = {
            CONFIG_ARTIFACT: str(config_file),
            BASE_ARTIFACT: str(_base_artifact(params.model.base_dir, Path(staging) / "base")),
            ADAPTER_ARTIFACT: str(adapter),
            SAFETY_RULES_ARTIFACT: str(params.evaluate.safety_rules),
        }
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME_IN_RUN,
            python_model=ReplyModel(),
            artifacts=artifacts,
            signature=_signature(),
            # The project's code travels with the model, so it loads without the project installed.
            code_paths=[str(Path(maeum.__file__).parent), str(Path(tasks.__file__).parent)],
            pip_requirements=_pip_requirements(),  # explicit: inference would load Keras in a subprocess
        )  # fmt: skip
    return info.model_uri


# === Registry ===


def get_champion(name: str) -> Champion | None:
    """The version `name@champion`, or None when the model or the alias does not exist yet."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        version = MlflowClient(tracking.tracking_uri()).get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException as error:
        if error.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
            return None
        raise
    tags = version.tags or {}
    loss = tags.get(TAG_VAL_LOSS)
    return Champion(
        version=str(version.version),
        run_id=tags.get(TAG_RUN_ID, version.run_id),
        data_version=tags.get(tracking.TAG_DATA_VERSION),
        params_hash=tags.get(tracking.TAG_PARAMS_HASH),
        val_loss_tuned=float(loss) if loss is not None else None,
    )


def register(model_uri: str, name: str, run_id: str, data_version: str, params_hash: str, val_loss_tuned: float) -> str:
    """Registers a logged model as a new version of `name`, tagged with what it was trained on; returns the version."""
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking.tracking_uri())
    tags = {tracking.TAG_DATA_VERSION: data_version, tracking.TAG_PARAMS_HASH: params_hash,
            TAG_VAL_LOSS: repr(float(val_loss_tuned)), TAG_RUN_ID: run_id}  # fmt: skip
    version = mlflow.register_model(model_uri, name, tags=tags)
    client = MlflowClient(tracking.tracking_uri())
    for key, value in tags.items():  # register_model's tags are not set on every store; set them for sure
        client.set_model_version_tag(name, version.version, key, value)
    return str(version.version)


def promote(name: str, version: str, run_id: str, val_loss_tuned: float | None) -> Promotion:
    """Moves `champion` to `version` if it beats the current champion; records the decision either way.

    The champion is read here, not at flow start, so a run that finished in between is compared too.
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking.tracking_uri())
    decision = decide_promotion(val_loss_tuned, get_champion(name))
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    client.set_model_version_tag(name, version, TAG_PROMOTED, str(decision.promote).lower())
    client.set_tag(run_id, TAG_PROMOTION, "promoted" if decision.promote else "kept")
    client.set_tag(run_id, TAG_PROMOTION_REASON, decision.reason)
    client.log_metric(run_id, METRIC_PROMOTED, float(decision.promote))
    if decision.champion_loss is not None:
        client.log_metric(run_id, METRIC_CHAMPION_LOSS, decision.champion_loss)
    log.info("model %s v%s: %s (%s)", name, version, "promoted to champion" if decision.promote else "not promoted",
             decision.reason)  # fmt: skip
    return decision
