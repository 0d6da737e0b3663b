"""The MLflow model registry: one servable model per training run, aliases with a history, model cards.

Every finished train + evaluate logs a pyfunc model into the training's MLflow run (the base: the
tiny preset itself or a pointer to the real one; its tokenizer; the training's `.lora.h5`; the
crisis screen it was evaluated with; a model card) and registers it as a new version of
`tracking.registered_model`. Aliases, not the deprecated stages:

    champion     the version chat and serve use by default
    challenger   (promotion.mode: manual) a version that passed every check, waiting for a person

    mlflow.pyfunc.load_model("models:/maeum-lora@champion").predict(pd.DataFrame({"message": ["요즘 잠을 못 자요."]}))

MLflow keeps no history of aliases, so every move is recorded as a tag on the registered model
(`maeum.alias_event.<n>`: alias, version, the version before, who, when, why); `alias_history`
reads them back and `rollback` returns `champion` to the version that held it before. The
decisions themselves are pure functions in `maeum.promotion`.
"""

from __future__ import annotations

import getpass
import json
import logging
import math
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from maeum import gemma, tracking
from maeum.config import Params
from maeum.promotion import Champion

log = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"
MODEL_NAME_IN_RUN = "model"  # the logged model's name inside the training run
BASE_ARTIFACT = "base"  # the model stage's base_dir: base.json (+ the tiny preset folder)
ADAPTER_ARTIFACT = "adapter"  # the training's output .lora.h5
SAFETY_ARTIFACT = "safety"  # the crisis screen the version was evaluated with: rules, lexicon, responses, classifier
CONFIG_ARTIFACT = "config"  # serving.json: history window, budgets (model_config would also become run params)
CARD_ARTIFACT = "model_card.md"
SAFETY_FILES = {"rules": "rules.yaml", "lexicon": "lexicon.yaml", "responses": "responses.yaml"}
SAFETY_CLASSIFIER_DIR = "classifier"

TAG_RUN_ID = "maeum.run_id"
TAG_PROMOTED = "maeum.promoted"
TAG_PROMOTION = "maeum.promotion"  # on the run: promoted | challenger | kept
TAG_PROMOTION_REASON = "maeum.promotion_reason"
TAG_ALIAS_EVENT = "maeum.alias_event."  # + sequence number, on the registered model
METRIC_CHAMPION_BPC = "champion_val_bpc"  # on the run: the champion re-scored on this run's data
METRIC_PROMOTED = "promoted"

# MLflow error codes that say "try again later" (sqlite busy, server unreachable or overloaded).
TRANSIENT_MLFLOW_ERRORS = {"TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED"}
MISSING = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}
SERVING_PACKAGES = ("keras", "keras-hub", "tensorflow-cpu", "tensorflow-text", "sentencepiece", "numpy", "pandas",
                    "scikit-learn", "kiwipiepy", "kiwipiepy-model", "pyyaml")  # fmt: skip


class RegistryError(RuntimeError):
    """A registry operation cannot be done (unknown version, nothing to roll back to); the message says why."""


def is_transient(error: BaseException) -> bool:
    """True for errors a retry can fix: connection trouble, timeouts, a busy or unavailable store."""
    from mlflow.exceptions import MlflowException

    if isinstance(error, MlflowException):
        return error.error_code in TRANSIENT_MLFLOW_ERRORS
    return isinstance(error, (ConnectionError, TimeoutError)) or type(error).__name__ in {"ConnectionError", "Timeout",
                                                                                          "OperationalError"}  # fmt: skip


def client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking.tracking_uri())


# === The servable model ===


def _history(value: Any) -> list[tuple[str, str]]:
    """History as (role, text) pairs, from a JSON string or a list of pairs or {"role", "content"} dicts."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):
        value = json.loads(value)
    return [(t["role"], t["content"]) if isinstance(t, dict) else (t[0], t[1]) for t in value]


def bundled_screen(folder: Path, context_turns: int) -> Any:
    """The crisis screen shipped in a version's `safety` artifact."""
    from maeum.safety import Screen

    folder = Path(folder)
    return Screen.from_files(folder / SAFETY_FILES["rules"], folder / SAFETY_FILES["lexicon"], folder / SAFETY_CLASSIFIER_DIR,
                             folder / SAFETY_FILES["responses"], context_turns)  # fmt: skip


class ReplyModel(mlflow.pyfunc.PythonModel):
    """Base + LoRA adapter answering user messages exactly as `maeum chat` does (greedy).

    Each row is one chat turn through `maeum.chat.ChatSession`: the same prompt building and
    truncation as training, and the same crisis screen, shipped with the model (a crisis or
    check-in message gets the reviewed response; the model is not called).

    Input: a DataFrame with a `message` column and an optional `history` column (JSON list of
    `[role, text]` pairs or `{"role", "content"}` objects, role `user` or `model`).
    Output: one reply string per row.
    """

    def load_context(self, context):
        config = json.loads(Path(context.artifacts[CONFIG_ARTIFACT]).read_text(encoding="utf-8"))
        self.config = config
        self.screen = bundled_screen(Path(context.artifacts[SAFETY_ARTIFACT]), int(config["context_turns"]))
        self.base = gemma.load_base(Path(context.artifacts[BASE_ARTIFACT]))
        gemma.load_lora(self.base.causal_lm, Path(context.artifacts[ADAPTER_ARTIFACT]))
        self.generator = gemma.ReplyGenerator(self.base, prompt_budget=int(config["max_prompt_tokens"]),
                                              max_new_tokens=int(config["max_new_tokens"]))  # fmt: skip

    def session(self, history: list[tuple[str, str]] | None = None) -> Any:
        from maeum.chat import ChatSession

        return ChatSession(self.generator, self.base.tokenizer, int(self.config["max_history_turns"]),
                           int(self.config["max_prompt_tokens"]), self.screen, list(history or []))  # fmt: skip

    def predict(self, context, model_input: pd.DataFrame, params=None) -> list[str]:
        frame = pd.DataFrame(model_input)
        histories = frame["history"] if "history" in frame else [None] * len(frame)
        return [self.session(_history(history)).respond(str(message)).reply for message, history in zip(frame["message"], histories)]


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


def _safety_artifact(params: Params, staging: Path) -> Path:
    """The crisis screen of `params.safety` as one folder: what the version was evaluated with."""
    safety = params.safety
    staging.mkdir(parents=True, exist_ok=True)
    for source, name in ((safety.rules_file, SAFETY_FILES["rules"]), (safety.lexicon_file, SAFETY_FILES["lexicon"]),
                         (safety.responses_file, SAFETY_FILES["responses"])):  # fmt: skip
        shutil.copy2(source, staging / name)
    shutil.copytree(safety.model_dir, staging / SAFETY_CLASSIFIER_DIR)
    return staging


def log_reply_model(run_id: str, params: Params, adapter: Path, card: str) -> str:
    """Logs the pyfunc model (and its card) into a run; returns its model URI.

    Args:
        run_id: the training run, or the evaluation run linked to it.
        params: the run's parameters (base_dir, safety, prompt window and budget).
        adapter: the `.lora.h5` file to serve (the training's output).
        card: the model card markdown.
    """
    import maeum
    from maeum import chat

    config = {
        "max_history_turns": params.preprocess.max_history_turns,
        "max_prompt_tokens": chat.prompt_budget(params),
        "max_new_tokens": params.chat.max_new_tokens,
        "context_turns": params.safety.context_turns,
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
            SAFETY_ARTIFACT: str(_safety_artifact(params, Path(staging) / "safety")),
        }
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME_IN_RUN,
            python_model=ReplyModel(),
            artifacts=artifacts,
            signature=_signature(),
            # The library travels with the model, so it loads without the project installed.
            code_paths=[str(Path(maeum.__file__).parent)],
            pip_requirements=_pip_requirements(),  # explicit: inference would load Keras in a subprocess
        )  # fmt: skip
        mlflow.log_text(card, f"{MODEL_NAME_IN_RUN}_card/{CARD_ARTIFACT}")
    return info.model_uri


@dataclass
class LoadedVersion:
    """A registered version ready to answer and to be scored: its own base, tokenizer, adapter and screen."""

    name: str
    version: str
    run_id: str | None
    model: gemma.LoadedBase
    screen: Any
    reply_model: ReplyModel

    @property
    def description(self) -> str:
        return f"{self.name} v{self.version} (MLflow run {self.run_id})"


def load_version(name: str, reference: str) -> LoadedVersion:
    """Loads `models:/<name>/<version>` or `models:/<name>@<alias>` with everything it shipped.

    Raises:
        RegistryError: the version or alias does not exist in this store.
    """
    from mlflow.exceptions import MlflowException

    store = client()
    try:
        version = store.get_model_version_by_alias(name, reference[1:]) if reference.startswith("@") else \
            store.get_model_version(name, reference)  # fmt: skip
    except MlflowException as error:
        raise RegistryError(f"models:/{name}{'' if reference.startswith('@') else '/'}{reference} is not in the registry "
                            f"at {tracking.tracking_uri()} ({error.message})") from None  # fmt: skip
    loaded = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}")
    reply_model = loaded.unwrap_python_model()
    return LoadedVersion(name, str(version.version), version.run_id, reply_model.base, reply_model.screen, reply_model)


# === Versions ===


def get_alias(name: str, alias: str) -> Any | None:
    """The model version holding `alias`, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client().get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code in MISSING:
            return None
        raise


def get_champion(name: str) -> Champion | None:
    """The version `name@champion`, or None when the model or the alias does not exist yet."""
    version = get_alias(name, CHAMPION_ALIAS)
    if version is None:
        return None
    tags = version.tags or {}
    return Champion(version=str(version.version), run_id=tags.get(TAG_RUN_ID, version.run_id),
                    data_version=tags.get(tracking.TAG_DATA_VERSION), params_hash=tags.get(tracking.TAG_PARAMS_HASH))  # fmt: skip


def version_of_run(name: str, run_id: str) -> str | None:
    """The version already registered from this training run, if any (a rerun must not register it twice)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client().search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    for version in versions:
        if (version.tags or {}).get(TAG_RUN_ID) == run_id:
            return str(version.version)
    return None


def register(model_uri: str, name: str, run_id: str, tags: dict[str, str], card: str) -> str:
    """Registers a logged model as a new version of `name` with its tags and card; returns the version."""
    mlflow.set_tracking_uri(tracking.tracking_uri())
    tags = {**tags, TAG_RUN_ID: run_id}
    version = mlflow.register_model(model_uri, name, tags=tags)
    store = client()
    for key, value in tags.items():  # register_model's tags are not set on every store; set them for sure
        store.set_model_version_tag(name, version.version, key, value)
    store.update_model_version(name, version.version, description=card)
    return str(version.version)


def update_card(name: str, version: str, card: str) -> None:
    client().update_model_version(name, version, description=card)


def add_reviewers_to_card(name: str, version: str, feedback: Any) -> None:
    """Puts reviewers' ratings (`maeum.feedback.VersionFeedback`) into the version's model card."""
    from maeum.promotion import with_reviewers

    current = client().get_model_version(name, version).description or ""
    update_card(name, version, with_reviewers(current, feedback))


# === Aliases and their history ===


def alias_history(name: str) -> list[dict[str, Any]]:
    """Every recorded alias move of `name`, oldest first."""
    from mlflow.exceptions import MlflowException

    try:
        tags = client().get_registered_model(name).tags or {}
    except MlflowException as error:
        if error.error_code in MISSING:
            return []
        raise
    events = [json.loads(value) for key, value in tags.items() if key.startswith(TAG_ALIAS_EVENT)]
    return sorted(events, key=lambda event: event["seq"])


def move_alias(name: str, alias: str, version: str, by: str, reason: str, action: str = "promote") -> dict[str, Any]:
    """Points `alias` at `version` and records who did it, when and why."""
    store = client()
    previous = get_alias(name, alias)
    store.set_registered_model_alias(name, alias, version)
    history = alias_history(name)
    event = {"seq": (history[-1]["seq"] + 1) if history else 1, "alias": alias, "version": str(version),
             "previous": str(previous.version) if previous else None, "action": action, "by": by,
             "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "reason": reason[:1000]}  # fmt: skip
    store.set_registered_model_tag(name, f"{TAG_ALIAS_EVENT}{event['seq']:06d}", json.dumps(event, ensure_ascii=False))
    if alias == CHAMPION_ALIAS:
        store.set_model_version_tag(name, version, TAG_PROMOTED, "true")
    log.info("%s@%s: v%s -> v%s (%s by %s: %s)", name, alias, event["previous"], version, action, by, reason)
    return event


def champion_stack(history: list[dict[str, Any]]) -> list[str]:
    """The champions in the order they took over, with rolled-back ones removed: the last is the current one."""
    stack: list[str] = []
    for event in history:
        if event["alias"] != CHAMPION_ALIAS:
            continue
        if event["action"] == "rollback":
            while stack and stack[-1] != event["version"]:
                stack.pop()
        elif not stack or stack[-1] != event["version"]:
            stack.append(event["version"])
    return stack


def promote_version(name: str, version: str, by: str | None = None, reason: str = "promoted by hand") -> dict[str, Any]:
    """Makes `version` the champion (a person's decision in manual mode, or the flow's in auto mode).

    Raises:
        RegistryError: no such version.
    """
    from mlflow.exceptions import MlflowException

    try:
        client().get_model_version(name, version)
    except MlflowException:
        raise RegistryError(f"{name} has no version {version} in {tracking.tracking_uri()}") from None
    event = move_alias(name, CHAMPION_ALIAS, version, by or getpass.getuser(), reason)
    challenger = get_alias(name, CHALLENGER_ALIAS)
    if challenger is not None and str(challenger.version) == str(version):
        client().delete_registered_model_alias(name, CHALLENGER_ALIAS)
    return event


def rollback(name: str, by: str | None = None) -> dict[str, Any]:
    """Returns `champion` to the version that held it before the current one.

    Raises:
        RegistryError: there is no earlier champion to return to.
    """
    stack = champion_stack(alias_history(name))
    if len(stack) < 2:
        raise RegistryError(f"{name} has no earlier champion to roll back to (champions so far: {stack or 'none'})")
    return move_alias(name, CHAMPION_ALIAS, stack[-2], by or getpass.getuser(), f"rollback from v{stack[-1]}", action="rollback")
