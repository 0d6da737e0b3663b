"""Typed view of `params.yaml`: the only place in the project that reads it.

Every stage (DVC command, Prefect task, chat) loads the same file through `load_params`
and receives frozen dataclasses. Unknown or misspelled keys are an error, not a silent
default, because a typo in a hyperparameter would otherwise train a different model
than the one the run records say.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

DEFAULT_PARAMS_FILE = Path("params.yaml")
SPLITS = ("train", "validation")  # the corpus's two files, in this order everywhere
TINY_PRESET = "tiny"
# The `train` keys that `train.tiny` may override for the tiny preset. Only the train stage reads
# them; tokenize reads sequence_length and loss_on, so those stay one value for every preset.
TINY_TRAIN_KEYS = frozenset({
    "lora_rank", "lora_targets", "learning_rate", "lr_schedule", "warmup_steps", "epochs", "weight_decay",
    "gradient_clip_norm", "early_stopping_patience", "bucket_boundaries", "bucket_count",
})  # fmt: skip


class ParamsError(ValueError):
    """params.yaml is missing, malformed, or holds a value of the wrong type."""


@dataclass(frozen=True)
class DataParams:
    raw_dir: Path = Path("data/sample")
    train_file: str = "Training.json"
    validation_file: str = "Validation.json"

    @property
    def train_path(self) -> Path:
        return self.raw_dir / self.train_file

    @property
    def validation_path(self) -> Path:
        return self.raw_dir / self.validation_file

    @property
    def split_paths(self) -> dict[str, Path]:
        return dict(zip(SPLITS, (self.train_path, self.validation_path), strict=True))


@dataclass(frozen=True)
class ValidateParams:
    reports_dir: Path = Path("reports/validate")
    min_dialogues: int = 1

    @property
    def report_file(self) -> Path:
        return self.reports_dir / "report.json"


@dataclass(frozen=True)
class PreprocessParams:
    out_dir: Path = Path("data/processed")
    max_history_turns: int = 4

    def split_path(self, split: str) -> Path:
        """The examples of one split (`train` or `validation`)."""
        return self.out_dir / f"{split}.parquet"


@dataclass(frozen=True)
class TinyModelParams:
    vocabulary_size: int = 4000
    num_layers: int = 2
    num_query_heads: int = 4
    num_key_value_heads: int = 2
    hidden_dim: int = 64
    intermediate_dim: int = 128
    head_dim: int = 16
    sliding_window_size: int = 128
    attention_logit_soft_cap: float = 50.0
    final_logit_soft_cap: float = 30.0
    pretrain_epochs: int = 3
    pretrain_batch_size: int = 16
    pretrain_sequence_length: int = 96
    pretrain_learning_rate: float = 3e-3


@dataclass(frozen=True)
class ModelParams:
    preset: str = "tiny"
    seed: int = 20261125
    base_dir: Path = Path("models/base")
    kaggle_handles: dict[str, str] = field(default_factory=dict)
    tiny: TinyModelParams = field(default_factory=TinyModelParams)


@dataclass(frozen=True)
class TokenizeParams:
    out_dir: Path = Path("data/tokenized")
    stats_file: Path = Path("reports/tokenize/stats.json")

    def split_path(self, split: str) -> Path:
        """The token ids and loss weights of one split (`train` or `validation`)."""
        return self.out_dir / f"{split}.npz"


@dataclass(frozen=True)
class SafetyParams:
    rules_file: Path = Path("data/safety/rules.yaml")
    responses_file: Path = Path("data/safety/responses.yaml")
    lexicon_file: Path = Path("data/safety/lexicon.yaml")
    train_file: Path = Path("data/safety/train.tsv")
    heldout_file: Path = Path("data/safety/heldout.tsv")
    replies_file: Path = Path("data/safety/replies.tsv")
    replies_heldout_file: Path = Path("data/safety/replies_heldout.tsv")
    model_dir: Path = Path("models/safety")
    metrics_file: Path = Path("reports/safety/metrics.json")
    report_file: Path = Path("reports/safety/report.json")
    validation_fraction: float = 0.2
    seed: int = 7
    check_in_recall: float = 0.96
    crisis_safe_rate: float = 0.01
    reply_safe_rate: float = 0.02
    context_turns: int = 3


@dataclass(frozen=True)
class TrainParams:
    sequence_length: int = 256
    loss_on: Literal["response", "all"] = "response"
    lora_rank: int = 2
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    batch_size: int = 8
    padding: Literal["bucket", "fixed"] = "bucket"
    bucket_boundaries: tuple[int, ...] = ()
    bucket_count: int = 16
    precision: Literal["float32", "bfloat16", "mixed_bfloat16"] = "float32"
    backend: Literal["tensorflow", "jax"] = "tensorflow"
    distribution: Literal["none", "data", "model"] = "none"
    mesh_shape: tuple[int, ...] = ()
    epochs: int = 2
    seed: int = 42
    shuffle: bool = True
    jit_compile: bool = True
    sample_max_new_tokens: int = 48
    lora_targets: Literal["query_value", "all"] = "query_value"
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0
    gradient_accumulation_steps: int = 1
    gradient_clip_norm: float | None = None
    early_stopping_patience: int = 0
    log_every_steps: int = 10
    eval_every_steps: int = 0
    checkpoint_every_steps: int = 50
    out_dir: Path = Path("models/lora")
    checkpoint_dir: Path = Path("checkpoints/train")
    adapter_name: str = "maeum"
    tiny: dict[str, Any] = field(default_factory=dict)

    @property
    def run_file(self) -> Path:
        """The finished training's record (MLflow run id, epochs, adapter), read by evaluate, chat and the flow."""
        return self.out_dir / "run.json"


@dataclass(frozen=True)
class EmotionParams:
    model_dir: Path = Path("models/emotion")
    metrics_file: Path = Path("reports/emotion/metrics.json")
    seed: int = 11


@dataclass(frozen=True)
class EvaluateParams:
    metrics_file: Path = Path("reports/evaluate/metrics.json")
    generation_file: Path = Path("reports/evaluate/generation.json")
    safety_file: Path = Path("reports/evaluate/safety.json")
    report_file: Path = Path("reports/evaluate/report.md")
    examples_file: Path = Path("reports/evaluate/examples.parquet")
    loss_plot_file: Path = Path("reports/evaluate/loss_per_epoch.json")
    num_generations: int = 48
    max_new_tokens: int = 48


@dataclass(frozen=True)
class PromotionParams:
    mode: Literal["auto", "manual"] = "auto"
    min_improvement: float = 0.01
    confidence: float = 0.95
    bootstrap_samples: int = 1000
    generation_tolerance: float = 0.05
    seed: int = 5


@dataclass(frozen=True)
class ChatParams:
    max_new_tokens: int = 128
    sampler: Literal["greedy", "top_k", "top_p", "random"] = "greedy"
    temperature: float = 1.0
    top_k: int = 5
    top_p: float = 0.9


@dataclass(frozen=True)
class ServeParams:
    host: str = "127.0.0.1"
    port: int = 8000
    trace: bool = True
    queue_size: int = 8
    max_tokens: int = 128


@dataclass(frozen=True)
class TrackingParams:
    experiment: str = "maeum-lora"
    registered_model: str = "maeum-lora"
    system_metrics: bool = False


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    validate: ValidateParams = field(default_factory=ValidateParams)
    preprocess: PreprocessParams = field(default_factory=PreprocessParams)
    model: ModelParams = field(default_factory=ModelParams)
    tokenize: TokenizeParams = field(default_factory=TokenizeParams)
    safety: SafetyParams = field(default_factory=SafetyParams)
    train: TrainParams = field(default_factory=TrainParams)
    emotion: EmotionParams = field(default_factory=EmotionParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    promotion: PromotionParams = field(default_factory=PromotionParams)
    chat: ChatParams = field(default_factory=ChatParams)
    serve: ServeParams = field(default_factory=ServeParams)
    tracking: TrackingParams = field(default_factory=TrackingParams)
    source: Path | None = None

    def as_flat_dict(self) -> dict[str, Any]:
        """Every parameter as `section.key` -> plain value, for MLflow and hashing."""
        flat: dict[str, Any] = {}
        _flatten(dataclasses.asdict(self), "", flat)
        flat.pop("source", None)
        return flat


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}{key}.", out)
    else:
        out[prefix.rstrip(".")] = str(value) if isinstance(value, Path) else value


def load_params(path: str | Path = DEFAULT_PARAMS_FILE, overrides: dict[str, Any] | None = None) -> Params:
    """Reads params.yaml into `Params`, applying dotted overrides such as `{"train.epochs": 1}`.

    Args:
        path: the YAML file; every section is optional and falls back to the defaults above.
        overrides: dotted keys to replace after loading (flow parameters, tests).

    Returns:
        The frozen, type-checked parameters.

    Raises:
        ParamsError: the file is missing or unreadable, a key is unknown, or a value has the wrong type.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ParamsError(f"{path}: parameters file not found (run from the repository root or pass --params)") from None
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value, path)
    params = _build(Params, raw, path, "")
    return dataclasses.replace(params, train=_train_for_preset(params, path), source=path)


def _train_for_preset(params: Params, path: Path) -> TrainParams:
    """The `train` section with `train.tiny` applied when the tiny preset is trained (the 2B recipe otherwise)."""
    train = params.train
    unknown = sorted(set(train.tiny) - TINY_TRAIN_KEYS)
    if unknown:
        raise ParamsError(f"{path}: train.tiny may override only {sorted(TINY_TRAIN_KEYS)}; got {unknown}")
    if params.model.preset != TINY_PRESET or not train.tiny:
        return train
    hints = typing.get_type_hints(TrainParams)
    values = {key: _coerce(hints[key], value, path, f"train.tiny.{key}") for key, value in train.tiny.items()}
    return dataclasses.replace(train, **values)


def _set_dotted(raw: dict, dotted: str, value: Any, path: Path) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ParamsError(f"{path}: cannot override {dotted}: {key} is not a section")
    node[leaf] = value


def _build(cls: type, raw: dict, path: Path, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: {prefix.rstrip('.') or 'top level'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ParamsError(f"{path}: unknown key(s) {', '.join(prefix + k for k in unknown)}; known: {sorted(known)}")
    values = {name: _coerce(hints[name], raw[name], path, prefix + name) for name in known if name in raw}
    return cls(**values)


def _coerce(hint: Any, value: Any, path: Path, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value or {}, path, key + ".")
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ParamsError(f"{path}: {key} must be one of {typing.get_args(hint)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        origin = typing.get_origin(hint)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{path}: {key} must be a list, got {value!r}")
        item = typing.get_args(hint)[0]
        return tuple(_coerce(item, v, path, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{path}: {key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is Path:
        return Path(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{path}: {key} must be true or false, got {value!r}")
        return value
    if hint is float:
        try:
            return float(value)  # YAML reads 1e-4 as a string, so accept numeric strings
        except (TypeError, ValueError):
            raise ParamsError(f"{path}: {key} must be a number, got {value!r}") from None
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{path}: {key} must be an integer, got {value!r}")
        return value
    if hint is str:
        return str(value)
    return value
