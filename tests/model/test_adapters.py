"""Adapters from every source (file, MLflow run, registry alias, Kaggle cache, whole .keras model),
rank checks, and Kaggle downloads that fail offline with one clear message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from maeum import adapters, chat, gemma
from maeum.config import TinyModelParams
from tests.conftest import REPO
from tests.model.conftest import working_dir

MAEUM = Path(sys.executable).parent / "maeum"
ORIGINAL = adapters.KAGGLE_ADAPTERS[adapters.DEFAULT_KAGGLE_ADAPTER]
INPUTS = {"token_ids": np.arange(2, 14, dtype="int32")[None], "padding_mask": np.ones((1, 12), dtype=bool)}


@pytest.fixture(scope="module")
def adapter_path(trained, prepared, pipeline_dir) -> Path:
    result, _ = trained
    return pipeline_dir / prepared.train.out_dir / result.epochs[-1].adapter


@pytest.fixture
def base(prepared, pipeline_dir) -> gemma.LoadedBase:
    return gemma.load_base(pipeline_dir / prepared.model.base_dir)


def logits(causal_lm):
    import keras

    return keras.ops.convert_to_numpy(causal_lm(INPUTS))


def fabricate_kaggle_cache(cache: Path, handle: str, files: dict[str, bytes]) -> Path:
    """kagglehub's layout: models/<owner>/<model>/<framework>/<variation>/<version>/ + <version>.complete."""
    *parent, version = handle.split("/")
    folder = cache.joinpath("models", *parent, version)
    folder.mkdir(parents=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    cache.joinpath("models", *parent, f"{version}.complete").touch()
    return folder


# === Sources ===


def test_rank_and_layers_are_read_from_the_lora_file(adapter_path, prepared):
    assert adapters.lora_file_rank(adapter_path) == prepared.train.lora_rank == 4
    assert adapters.lora_file_layers(adapter_path) == 7 * prepared.model.tiny.num_layers  # every projection (lora_targets: all)


def test_adapter_from_a_path_and_from_a_folder_takes_the_last_epoch(adapter_path):
    assert adapters.resolve_adapter(str(adapter_path)).path == adapter_path
    from_folder = adapters.resolve_adapter(str(adapter_path.parent))
    assert from_folder.path.name == "maeum_4_epoch2.lora.h5" and from_folder.kind == "lora"


def test_adapter_from_an_mlflow_run_id_and_runs_uri(trained, adapter_path, in_pipeline_dir):
    run_id = trained[0].run_id
    for spec in (run_id, f"runs:/{run_id}"):
        adapter = adapters.resolve_adapter(spec)
        assert adapter.path.name == adapter_path.name and adapter.source == spec
        assert adapter.path.read_bytes() == adapter_path.read_bytes()


def test_unknown_run_id_is_a_clear_error(in_pipeline_dir):
    with pytest.raises(adapters.AdapterError, match="no such MLflow run"):
        adapters.resolve_adapter("0" * 32)


@pytest.fixture(scope="module")
def registry(adapter_path, tmp_path_factory):
    """A temporary MLflow store: a run with the lora artifact, its pyfunc registered as maeum-lora@champion."""
    import mlflow

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return model_input

    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("adapters", artifact_location=(folder / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_artifact(str(adapter_path.with_name("maeum_4_epoch1.lora.h5")), artifact_path="lora")
            mlflow.log_artifact(str(adapter_path), artifact_path="lora")
            info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), artifacts={"lora": str(adapter_path)},
                                           pip_requirements=[])  # fmt: skip
        version = mlflow.register_model(info.model_uri, "maeum-lora")
        mlflow.MlflowClient(uri).set_registered_model_alias("maeum-lora", "champion", version.version)
    finally:
        mlflow.set_tracking_uri(previous)
    return SimpleNamespace(uri=uri, run_id=run.info.run_id, version=version.version)


def test_adapter_from_the_registry_alias_and_version(registry, adapter_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.uri)
    for spec in ("models:/maeum-lora@champion", f"models:/maeum-lora/{registry.version}"):
        adapter = adapters.resolve_adapter(spec)
        assert adapter.path.name == "maeum_4_epoch2.lora.h5"  # the last epoch, not epoch 1
        assert adapter.path.read_bytes() == adapter_path.read_bytes()
    with pytest.raises(adapters.AdapterError, match="not in the model registry"):
        adapters.resolve_adapter("models:/maeum-lora@nobody")


def test_default_reference_prefers_the_last_training_then_the_champion(registry, adapter_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.uri)
    chosen, why = adapters.default_reference(adapter_path.parent / "run.json", "maeum-lora", "tiny")
    assert chosen == str(adapter_path) and "last training" in why
    chosen, why = adapters.default_reference(tmp_path / "run.json", "maeum-lora", "tiny")
    assert chosen == "models:/maeum-lora@champion" and "champion" in why
    assert adapters.registered_reference(chosen) == ("maeum-lora", "@champion")
    assert adapters.registered_reference("models:/maeum-lora/3") == ("maeum-lora", "3")
    assert adapters.registered_reference(str(adapter_path)) is None


def test_default_reference_is_none_without_training_or_registry_and_creates_no_store(adapter_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default: ./mlflow.db, which does not exist
    chosen, why = adapters.default_reference(adapter_path.parent / "run.json", "maeum-lora", "gemma2_instruct_2b_en")
    assert chosen is None and "trained on 'tiny'" in why and "base model alone" in why
    assert not (tmp_path / "mlflow.db").exists()


def test_adapter_from_a_kaggle_cache_offline(adapter_path, base, tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path))
    fabricate_kaggle_cache(tmp_path, ORIGINAL, {adapter_path.name: adapter_path.read_bytes(), "README.md": b"#"})
    for spec in (f"kaggle:{adapters.DEFAULT_KAGGLE_ADAPTER}", f"kaggle:{ORIGINAL}"):
        adapter = adapters.resolve_adapter(spec)
        assert adapter.path.is_relative_to(tmp_path) and adapter.path.name == adapter_path.name
    before = logits(base.causal_lm)
    adapters.apply_lora(base, adapter)
    assert not np.allclose(logits(base.causal_lm), before, atol=1e-6)  # the adapter changed the model


def test_kaggle_model_without_weights_is_refused_with_its_listing(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path))
    handle = adapters.KAGGLE_ADAPTERS["gemma2-2b-ko-empathetic-lora"]
    fabricate_kaggle_cache(tmp_path, handle, {"model.safetensors": b"x", "config.json": b"{}"})
    with pytest.raises(adapters.AdapterError) as error:
        adapters.resolve_adapter("kaggle:gemma2-2b-ko-empathetic-lora")
    assert "no *.lora.h5" in str(error.value) and "model.safetensors" in str(error.value)


# === Rank checks and misfits ===


def test_requested_rank_other_than_the_files_is_a_clear_error(adapter_path, base):
    with pytest.raises(adapters.AdapterError) as error:
        adapters.apply_lora(base, adapters.adapter_from_file(adapter_path), rank=2)
    message = str(error.value)
    assert "rank 2" in message and "rank 4" in message and adapter_path.name in message


def test_already_enabled_lora_of_another_rank_is_a_clear_error(adapter_path, base):
    base.causal_lm.backbone.enable_lora(rank=2, target_layer_names=["query", "key", "value", "attention_output", "ffw_gating",
                                                                     "ffw_gating_2", "ffw_linear"])  # fmt: skip
    with pytest.raises(adapters.AdapterError) as error:
        adapters.apply_lora(base, adapters.adapter_from_file(adapter_path))
    message = str(error.value)
    assert "rank 2" in message and "rank 4" in message and adapter_path.name in message


def test_adapter_of_another_base_shape_is_refused(base, tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    other = gemma.tiny_backbone(TinyModelParams(hidden_dim=16, intermediate_dim=32, head_dim=8, sliding_window_size=16), 300)
    other.enable_lora(rank=2)
    path = tmp_path / "other.lora.h5"
    other.save_lora_weights(str(path))
    with pytest.raises(adapters.AdapterError, match="does not fit the base 'tiny'"):
        adapters.apply_lora(base, adapters.adapter_from_file(path))


def test_a_file_that_is_not_lora_weights_is_named_in_the_error(tmp_path):
    path = tmp_path / "broken.lora.h5"
    path.write_bytes(b"not hdf5")
    with pytest.raises(adapters.AdapterError, match="broken.lora.h5"):
        adapters.resolve_adapter(str(path))


# === Whole .keras model (the original notebook's format) ===


@pytest.fixture(scope="module")
def whole_model(prepared, pipeline_dir, tmp_path_factory):
    """The tiny base fine-tuned with LoRA rank 4 (random factors), saved whole, and its logits."""
    import keras_hub

    pointer = gemma.read_base_pointer(pipeline_dir / prepared.model.base_dir)
    causal_lm = keras_hub.models.GemmaCausalLM.from_preset(str(pipeline_dir / prepared.model.base_dir / pointer["path"]))
    causal_lm.backbone.enable_lora(rank=4)
    rng = np.random.default_rng(0)
    for weight in causal_lm.backbone.trainable_weights:  # B starts at zero; make the fine-tuning visible
        weight.assign(rng.normal(size=weight.shape).astype("float32") * 0.05)
    path = tmp_path_factory.mktemp("whole") / "my_fine_tuned_gemma2_full_rank4.keras"
    causal_lm.save(str(path))
    return path, logits(causal_lm)


def test_whole_keras_model_loads_with_its_tokenizer_and_rank(whole_model, prepared, pipeline_dir, pipeline_env):
    path, expected = whole_model
    with working_dir(pipeline_dir, pipeline_env):
        chat_model = chat.load_chat_model(prepared, adapter=str(path))
    assert chat_model.adapter.kind == "keras" and "whole model" in chat_model.description
    loaded = chat_model.model
    np.testing.assert_allclose(logits(loaded.causal_lm), expected, atol=1e-5)
    assert adapters.keras_model_lora_rank(loaded.causal_lm, path) == 4
    assert loaded.causal_lm.preprocessor is None and loaded.end_of_turn_id > 3
    session = chat.open_session(prepared, chat_model, max_new_tokens=8)
    assert isinstance(session.respond("요즘 너무 지쳐").reply, str) and len(session.history) == 2


def test_whole_keras_model_of_another_rank_than_requested_is_a_clear_error(whole_model):
    path, _ = whole_model
    with pytest.raises(adapters.AdapterError) as error:
        adapters.load_whole_model(adapters.adapter_from_file(path), None, rank=2)
    assert "rank 4" in str(error.value) and "rank 2" in str(error.value) and path.name in str(error.value)


# === Kaggle downloads fail fast and clearly ===


def run_maeum(*args, env=None, cwd=None, timeout=120):
    return subprocess.run([str(MAEUM), *args], check=False, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})  # fmt: skip


@pytest.mark.parametrize("args", [
    ("download", "base", "--preset", "gemma2_instruct_2b_en", "--params", str(REPO / "params.yaml")),
    ("download", "adapter"),
    ("download", "adapter", "gemma2-2b-ko-empathetic-lora"),
])  # fmt: skip
def test_offline_download_is_one_clear_message(args, tmp_path):
    done = run_maeum(*args, env={"KAGGLEHUB_CACHE": str(tmp_path)}, cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert "Traceback" not in done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("maeum:")]
    assert "offline" in line and "KAGGLEHUB_CACHE" in line and str(tmp_path) in line


def test_offline_kaggle_adapter_in_chat_says_to_pass_a_local_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path))
    with pytest.raises(gemma.WeightsUnavailable) as error:
        adapters.resolve_adapter(f"kaggle:{adapters.DEFAULT_KAGGLE_ADAPTER}")
    message = str(error.value)
    assert ORIGINAL in message and "offline" in message and "--adapter PATH" in message and "model.preset" not in message


@pytest.mark.parametrize(("status", "credentials", "expected"), [
    (401, True, "no Kaggle credentials"),
    (403, False, "no Kaggle credentials"),
    (403, True, "licence has not been accepted"),
    (404, True, "has no model"),
])  # fmt: skip
def test_kaggle_refusals_name_the_cause(status, credentials, expected, monkeypatch, tmp_path):
    import kagglehub
    import requests

    def refuse(handle):
        raise requests.HTTPError(f"{status}", response=SimpleNamespace(status_code=status))

    monkeypatch.setattr(kagglehub, "model_download", refuse)
    monkeypatch.setattr(gemma, "KAGGLE_CREDENTIAL_FILE", tmp_path / "kaggle.json")
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    if credentials:
        monkeypatch.setenv("KAGGLE_USERNAME", "someone")
        monkeypatch.setenv("KAGGLE_KEY", "secret")
    with pytest.raises(gemma.WeightsUnavailable, match=expected) as error:
        adapters.download_kaggle_adapter(adapters.DEFAULT_KAGGLE_ADAPTER)
    assert ORIGINAL in str(error.value) and "--adapter PATH" in str(error.value)


@pytest.mark.network
def test_original_adapter_downloads_and_holds_usable_weights():
    adapter = adapters.adapter_in_folder(adapters.download_kaggle_adapter(adapters.DEFAULT_KAGGLE_ADAPTER), "kaggle")
    assert adapter.kind in ("lora", "keras")


def test_malformed_kaggle_handle_is_a_clear_error():
    with pytest.raises(adapters.AdapterError, match="not a Kaggle model handle"):
        adapters.resolve_adapter("kaggle:some/bad")
