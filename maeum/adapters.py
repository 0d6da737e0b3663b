"""Adapters for chat: where a fine-tuned model comes from and how it is put on the base.

An adapter is either LoRA weights (`*.lora.h5`, saved by `backbone.save_lora_weights`, applied
to the base) or a whole fine-tuned model (`*.keras`, as the original project's inference
notebook loaded with `keras.models.load_model`; it replaces the base). `resolve_adapter` turns
what a person types into one local file:

    models/lora/maeum_2_epoch2.lora.h5        a file (or a folder holding one)
    26eb22a9181d4424816e5387d2171348          an MLflow run id: its last epoch's lora/*.lora.h5
    runs:/26eb22a9181d4424816e5387d2171348    the same
    models:/maeum-lora@champion               a registered model version (alias or /<version>)
    kaggle:gemma2-ko-dialogue-lora            a Kaggle model (alias below or a full handle)
    none                                      the base alone

Kaggle downloads go through `maeum.gemma.kaggle_download`, so `KAGGLEHUB_CACHE` and the
offline / credentials / licence messages are the same as for the base.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maeum import gemma

log = logging.getLogger(__name__)

LORA_SUFFIX = ".lora.h5"  # keras-hub refuses any other name for LoRA weights
KERAS_SUFFIX = ".keras"
RUNS_PREFIX = "runs:/"
MODELS_PREFIX = "models:/"
KAGGLE_PREFIX = "kaggle:"
NO_ADAPTER = "none"
CHAMPION_ALIAS = "champion"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
EPOCH = re.compile(r"epoch(\d+)")
RANK_IN_NAME = re.compile(r"rank_?(\d+)")  # my_fine_tuned_gemma2_full_rank4.keras
RANK_KEYS = ("lora/vars/rank", "lora/rank")  # Keras 3.15 writes the former; older Keras the latter

# The original project's published weights (Kaggle user hyun-woo-kim). Only the first is known
# to exist as a Keras model; what the second holds cannot be checked offline: it is used when
# the download holds a *.lora.h5 or *.keras file, and refused with a listing otherwise.
KAGGLE_ADAPTERS = {
    "gemma2-ko-dialogue-lora": "hyun-woo-kim/gemma2-ko-dialogue-lora/keras/default/1",
    "gemma2-2b-ko-empathetic-lora": "hyun-woo-kim/gemma2-2b-ko-empathetic-lora/keras/default/1",
}
DEFAULT_KAGGLE_ADAPTER = "gemma2-ko-dialogue-lora"
HANDLE_PARTS = (4, 5)  # owner/model/framework/variation, and /version
LOCAL_ADAPTER_HINT = (
    "Or copy the adapter file (*.lora.h5 or *.keras) to this machine and pass its path: "
    "`maeum chat --adapter PATH`."
)


class AdapterError(RuntimeError):
    """An adapter cannot be found or does not fit the model; the message says which and why."""


@dataclass(frozen=True)
class Adapter:
    """One local adapter file and how it was found."""

    path: Path
    source: str  # what was asked for, e.g. "models:/maeum-lora@champion"

    @property
    def kind(self) -> str:
        return "lora" if self.path.name.endswith(LORA_SUFFIX) else "keras"

    def describe(self) -> str:
        shown = self.path.name if self.source == str(self.path) else f"{self.path.name} from {self.source}"
        if self.kind == "lora":
            return f"LoRA {shown} (rank {lora_file_rank(self.path)})"
        return f"whole model {shown}"


# === Reading .lora.h5 files ===


def lora_file_rank(path: Path) -> int:
    """The LoRA rank stored in a `.lora.h5` file.

    Raises:
        AdapterError: the file is not LoRA weights written by keras-hub.
    """
    import h5py

    try:
        with h5py.File(path, "r") as file:
            for key in RANK_KEYS:
                if key in file:
                    return int(file[key][()])
    except OSError as error:
        raise AdapterError(f"{path} is not a readable HDF5 file ({error})") from None
    raise AdapterError(f"{path} holds no LoRA rank (none of {RANK_KEYS}): not keras-hub LoRA weights")


def lora_file_layers(path: Path) -> int:
    """How many layers a `.lora.h5` file holds LoRA factors for."""
    import h5py

    with h5py.File(path, "r") as file:
        return sum(1 for name in file["lora"] if name.isdigit())


def keras_model_lora_rank(causal_lm: Any, path: Path) -> int | None:
    """The LoRA rank of a whole model loaded from `path`; None when it cannot be known.

    Keras merges LoRA factors into the kernels when it saves a model, and the backbone is
    rebuilt from its own config, so a loaded `.keras` model has no LoRA layers left: the rank
    then survives only in the file name (the original notebook's `..._full_rank4.keras`).
    """
    ranks = {layer.lora_rank for layer in causal_lm.backbone._flatten_layers() if getattr(layer, "lora_enabled", False)}
    if len(ranks) > 1:
        raise AdapterError(f"{path}: model has LoRA layers of several ranks {sorted(ranks)}")
    if ranks:
        return ranks.pop()
    match = RANK_IN_NAME.search(path.name)
    return int(match.group(1)) if match else None


# === Resolving what was asked for to a local file ===


def adapter_from_file(path: Path, source: str | None = None) -> Adapter:
    """A local `.lora.h5` or `.keras` file as an adapter, checked to exist and (LoRA) to hold a rank.

    Raises:
        AdapterError: missing, wrongly named, or not keras-hub LoRA weights.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise AdapterError(f"adapter file {path} does not exist")
    if not path.name.endswith((LORA_SUFFIX, KERAS_SUFFIX)):
        raise AdapterError(f"{path}: an adapter is a *{LORA_SUFFIX} (LoRA weights) or *{KERAS_SUFFIX} (whole model) file")
    adapter = Adapter(path, source or str(path))
    if adapter.kind == "lora":
        lora_file_rank(path)  # fail here, with the file named, if it is not LoRA weights
    return adapter


def _last_epoch_first(names: list[str]) -> list[str]:
    def key(name: str) -> tuple[int, str]:
        match = EPOCH.search(name)
        return (int(match.group(1)) if match else -1, name)

    return sorted(names, key=key, reverse=True)


def adapter_in_folder(folder: Path, source: str) -> Adapter:
    """The adapter in a folder: the last epoch's `*.lora.h5`, else a `*.keras` whole model.

    Raises:
        AdapterError: the folder holds neither; the message lists what it does hold.
    """
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    loras = [p for p in files if p.name.endswith(LORA_SUFFIX)]
    if loras:
        by_name = {str(p.relative_to(folder)): p for p in loras}
        return adapter_from_file(by_name[_last_epoch_first(list(by_name))[0]], source)
    models = [p for p in files if p.name.endswith(KERAS_SUFFIX)]
    if len(models) == 1:
        return adapter_from_file(models[0], source)
    listing = ", ".join(str(p.relative_to(folder)) for p in files[:20]) or "nothing"
    if models:
        raise AdapterError(f"{source}: several whole models in {folder} ({listing}); pass one file's path")
    raise AdapterError(
        f"{source}: {folder} holds no *{LORA_SUFFIX} LoRA weights and no *{KERAS_SUFFIX} model (it holds: {listing}), "
        "so maeum cannot use it as an adapter. If it is a keras-hub preset folder, use it as the base: --preset PATH."
    )


def _mlflow_client() -> Any:
    from mlflow import MlflowClient

    from maeum import tracking

    # Explicit URI: mlflow's global one may have been set by another stage in this process.
    return MlflowClient(tracking_uri=tracking.tracking_uri())


def adapter_from_run(run_id: str, source: str | None = None) -> Adapter:
    """The LoRA weights a training run chose (its `maeum.adapter` tag; else its last epoch's), downloaded locally."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from maeum import tracking

    source = source or f"{RUNS_PREFIX}{run_id}"
    client = _mlflow_client()
    try:
        run = client.get_run(run_id)
        names = [Path(a.path).name for a in client.list_artifacts(run_id, tracking.ADAPTER_ARTIFACTS)]
    except MlflowException as error:
        raise AdapterError(f"{source}: no such MLflow run in {tracking.tracking_uri()} ({error.message})") from None
    names = [n for n in names if n.endswith(LORA_SUFFIX)]
    if not names:
        raise AdapterError(f"{source}: MLflow run {run_id} has no {tracking.ADAPTER_ARTIFACTS}/*{LORA_SUFFIX} artifact")
    chosen = run.data.tags.get(tracking.TAG_OUTPUT_ADAPTER) or _last_epoch_first(names)[0]
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=f"{tracking.ADAPTER_ARTIFACTS}/{chosen}", tracking_uri=tracking.tracking_uri()
    )
    return adapter_from_file(Path(local), source)


def registered_run_id(uri: str) -> str:
    """The run behind `models:/<name>@<alias>` or `models:/<name>/<version>`."""
    from mlflow.exceptions import MlflowException

    from maeum import tracking

    reference = uri[len(MODELS_PREFIX) :].strip("/")
    client = _mlflow_client()
    try:
        if "@" in reference:
            name, alias = reference.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        elif "/" in reference:
            name, number = reference.rsplit("/", 1)
            version = client.get_model_version(name, number)
        else:
            raise AdapterError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    except MlflowException as error:
        raise AdapterError(f"{uri}: not in the model registry at {tracking.tracking_uri()} ({error.message})") from None
    if not version.run_id:
        raise AdapterError(f"{uri}: model version {version.version} records no training run")
    return version.run_id


def kaggle_handle(name: str) -> str:
    """A full Kaggle handle for a known alias (see KAGGLE_ADAPTERS) or the handle itself.

    Raises:
        AdapterError: neither a known name nor shaped like a model handle.
    """
    handle = KAGGLE_ADAPTERS.get(name, name).strip("/")
    if len(handle.split("/")) not in HANDLE_PARTS:
        raise AdapterError(
            f"{name!r} is not a Kaggle model handle <owner>/<model>/<framework>/<variation>/<version> (with a version "
            f"the kagglehub cache answers offline) nor a known name ({', '.join(KAGGLE_ADAPTERS)})"
        )
    return handle


def download_kaggle_adapter(name: str) -> Path:
    """Downloads (or finds in `KAGGLEHUB_CACHE`) a Kaggle model; returns its folder.

    Raises:
        gemma.WeightsUnavailable: offline, no credentials, licence not accepted, or not found.
    """
    return gemma.kaggle_download(kaggle_handle(name), local_hint=LOCAL_ADAPTER_HINT)


def resolve_adapter(spec: str) -> Adapter | None:
    """Turns an adapter reference (see the module docstring) into a local file; None for `none`.

    Raises:
        AdapterError: the reference names nothing usable.
        gemma.WeightsUnavailable: a Kaggle adapter cannot be downloaded here.
    """
    spec = spec.strip()
    if spec.lower() == NO_ADAPTER:
        return None
    if spec.startswith(KAGGLE_PREFIX):
        name = spec[len(KAGGLE_PREFIX) :]
        return adapter_in_folder(download_kaggle_adapter(name), spec)
    if spec.startswith(MODELS_PREFIX):
        return adapter_from_run(registered_run_id(spec), spec)
    if spec.startswith(RUNS_PREFIX):
        return adapter_from_run(spec[len(RUNS_PREFIX) :].strip("/").split("/")[0], spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return adapter_in_folder(path, spec)
    if path.exists() or spec.endswith((LORA_SUFFIX, KERAS_SUFFIX)):
        return adapter_from_file(path, spec)
    if RUN_ID.match(spec):
        return adapter_from_run(spec, spec)
    raise AdapterError(
        f"adapter {spec!r} is not a file, a folder, an MLflow run id, runs:/<id>, models:/<name>@<alias> "
        f"or kaggle:<handle> (known: {', '.join(KAGGLE_ADAPTERS)})"
    )


def registry_has(name: str, alias: str = CHAMPION_ALIAS) -> bool:
    """Whether the configured MLflow store has `models:/<name>@<alias>`; never creates a store."""
    from maeum import tracking

    uri = tracking.tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).exists():
        return False  # asking would create an empty mlflow.db in the working directory
    from mlflow.exceptions import MlflowException

    try:
        _mlflow_client().get_model_version_by_alias(name, alias)
    except MlflowException:
        return False
    return True


def default_reference(run_file: Path, registered_model: str, base_preset: str | None = None) -> tuple[str | None, str]:
    """What chat and serve use when no adapter is named, and why.

    Order: the last local training (`train.out_dir/run.json`) when it was trained on
    `base_preset`, then the registry's champion (with its own base and screen), then none.

    Returns:
        (an adapter reference or None for the base alone, a sentence saying where it came from or why there is none).
    """
    import json

    not_local = f"no {run_file}"
    if run_file.is_file():
        run = json.loads(run_file.read_text(encoding="utf-8"))
        if base_preset is None or run.get("preset") in (None, base_preset):
            return str(run_file.parent / run["adapter"]), f"the last training, {run_file}"
        not_local = f"{run_file} was trained on {run.get('preset')!r}, not {base_preset!r},"
    champion = f"{MODELS_PREFIX}{registered_model}@{CHAMPION_ALIAS}"
    if registry_has(registered_model):
        return champion, f"{not_local.rstrip(',')}, so the registry's champion"
    return None, (f"{not_local} and no {champion}: chatting with the base model alone, "
                  "which was never fine-tuned (pass --adapter)")  # fmt: skip


def registered_reference(spec: str) -> tuple[str, str] | None:
    """(model name, version or @alias) of a `models:/` reference; None for any other kind of adapter."""
    if not spec.startswith(MODELS_PREFIX):
        return None
    reference = spec[len(MODELS_PREFIX) :].strip("/")
    if "@" in reference:
        name, alias = reference.split("@", 1)
        return name, f"@{alias}"
    if "/" in reference:
        return tuple(reference.rsplit("/", 1))  # type: ignore[return-value]
    raise AdapterError(f"{spec}: expected models:/<name>@<alias> or models:/<name>/<version>")


# === Putting an adapter on a model ===


def apply_lora(base: gemma.LoadedBase, adapter: Adapter, rank: int | None = None) -> gemma.LoadedBase:
    """Loads LoRA weights into `base` in place (enabling LoRA at the file's rank if it is off).

    Args:
        base: the loaded base model.
        adapter: a `.lora.h5` adapter.
        rank: the rank the caller expects (None: whatever the file holds).

    Returns:
        `base`, now generating with the adapter.

    Raises:
        AdapterError: the file's rank differs from `rank` or from LoRA already enabled on the
            model, or the weights were trained on a base of another shape.
    """
    path = adapter.path
    file_rank = lora_file_rank(path)
    if rank is not None and rank != file_rank:
        raise AdapterError(f"{path} holds LoRA rank {file_rank}, but rank {rank} was requested; "
                           f"drop --lora-rank or pass --lora-rank {file_rank}")  # fmt: skip
    backbone = base.causal_lm.backbone
    try:
        gemma.load_lora(base.causal_lm, path)
    except ValueError as error:
        if "ranks must match" in str(error):  # keras-hub's rank check; shape errors also say "rank"
            enabled = getattr(backbone, "_lora_rank", "another")
            raise AdapterError(f"{path} holds LoRA rank {file_rank}, but LoRA of rank {enabled} is already "
                               f"enabled on the model; both ranks must match") from None  # fmt: skip
        raise _misfit(adapter, base, error) from None
    except (KeyError, TypeError) as error:
        raise _misfit(adapter, base, error) from None
    return base


def _misfit(adapter: Adapter, base: gemma.LoadedBase, error: Exception) -> AdapterError:
    return AdapterError(
        f"{adapter.path} (LoRA rank {lora_file_rank(adapter.path)} on {lora_file_layers(adapter.path)} layers) does not "
        f"fit the base {base.preset!r} ({base.path}): it was trained on a base of another shape. Pick that base with "
        f"--preset (the original project fine-tuned a Gemma2 2B preset). keras said: {error}"
    )


def load_whole_model(adapter: Adapter, tokenizer_preset: Path | None, rank: int | None = None) -> gemma.LoadedBase:
    """Loads a whole fine-tuned `GemmaCausalLM` saved as `.keras` (the original notebook's format).

    Args:
        adapter: a `.keras` adapter.
        tokenizer_preset: a preset folder whose tokenizer is used when the file has no preprocessor.
        rank: the LoRA rank the caller expects (None: any).

    Returns:
        The model and its tokenizer, ready for generation (preprocessor detached).

    Raises:
        AdapterError: not a causal LM, no tokenizer to be had, or a rank other than `rank`.
    """
    import keras
    import keras_hub

    try:
        with warnings.catch_warnings():  # "compile() was not called": chat only generates
            warnings.simplefilter("ignore", UserWarning)
            causal_lm = keras.models.load_model(str(adapter.path))
    except Exception as error:  # keras raises many types for a bad archive; all mean "cannot use this file"
        raise AdapterError(f"{adapter.path}: keras cannot load this model ({type(error).__name__}: {error})") from None
    if not isinstance(causal_lm, keras_hub.models.CausalLM):
        raise AdapterError(f"{adapter.path} holds a {type(causal_lm).__name__}, not a keras-hub causal LM")
    model_rank = keras_model_lora_rank(causal_lm, adapter.path)
    if rank is not None and model_rank is None:
        log.warning("%s: LoRA rank unknown (merged into the weights when saved); --lora-rank %d not checked",
                    adapter.path, rank)  # fmt: skip
    elif rank is not None and model_rank != rank:
        raise AdapterError(f"{adapter.path} is a model fine-tuned with LoRA rank {model_rank}, but rank {rank} was "
                           "requested; drop --lora-rank or pass the model's rank")  # fmt: skip
    if causal_lm.preprocessor is not None:
        tokenizer = causal_lm.preprocessor.tokenizer
    elif tokenizer_preset is not None:
        tokenizer = keras_hub.models.GemmaTokenizer.from_preset(str(tokenizer_preset))
    else:
        raise AdapterError(f"{adapter.path} has no tokenizer inside and no base preset was given for one (--preset)")
    causal_lm.preprocessor = None  # chat feeds token ids built by maeum.dialogue
    return gemma.LoadedBase(causal_lm=causal_lm, tokenizer=tokenizer, preset=adapter.path.name, path=adapter.path)
