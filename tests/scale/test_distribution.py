"""train.distribution on simulated CPU devices: none, data and model parallel train the same LoRA.

Every run is the real train stage (`tasks.train.run`, JAX backend) on the same tiny Gemma2-shaped
base and the same tokenized batches, with 4 devices simulated by XLA_FLAGS (set before JAX starts):

- `none` and `model` (mesh [2, 2]: 2 batch x 2 model shards) in one process with 4 devices;
- `data` as a two-host run: two processes with 2 devices each, joined by `jax.distributed` through
  the MAEUM_* variables, each in its own folder as on separate machines; only process 0 may write.

The one-process worker then loads each run's last `.lora.h5` into a base on one device. The tests
read the runs' outputs; the checks of the configuration itself are pure and run in-process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from maeum.config import TinyModelParams, TrainParams, load_params
from maeum.distribution import Cluster, DistributionError, check, check_backbone, cluster_from_env, mesh_for
from tests.conftest import REPO, SAMPLE_DIR

DEVICES = 4
HOSTS = 2  # the data-parallel run: HOSTS processes with DEVICES // HOSTS devices each
IN_WORKER = {"none": [], "model": [2, 2]}  # distribution -> mesh_shape, run in the one 4-device process
LOSS_RTOL = 1e-4  # observed differences are ~2e-7 relative: float32 sums in another order
OUTPUT_ATOL = 1e-4  # logits of two reloaded adapters (values around +-10)
# Gemma2-shaped and divisible by the [2, 2] mesh: heads and FFW width over model, hidden over batch.
TINY = TinyModelParams(vocabulary_size=1280, num_layers=2, num_query_heads=4, num_key_value_heads=2, hidden_dim=16,
                       intermediate_dim=32, head_dim=8, sliding_window_size=32, pretrain_epochs=0)  # fmt: skip
RUN_PARAMS = """\
data:
  raw_dir: {raw_dir}
model:
  base_dir: {root}/base
tokenize:
  out_dir: {root}/tokenized
train:
  backend: jax
  sequence_length: 64
  bucket_boundaries: [64]   # one batch shape: one compile per run
  batch_size: 8
  lora_rank: 2
  learning_rate: 3.0e-2     # large, so two epochs move the LoRA weights visibly
  epochs: 2
  sample_max_new_tokens: 4
  out_dir: lora             # relative: each run writes in its own working folder
  checkpoint_dir: checkpoints
tracking:
  experiment: distribution
"""


# === Inputs: a tiny preset, tokenized splits and params, as the earlier stages would write them ===


def _synthetic_split(rng: np.random.Generator, count: int, vocabulary: int):
    from maeum.tokenized import TokenizedSplit

    lengths = rng.integers(12, 65, count)
    prompt_lengths = (lengths // 2).astype("int32")
    ids = rng.integers(6, vocabulary, int(lengths.sum())).astype("int32")
    weights = np.concatenate([(np.arange(n) >= p).astype("float32") for n, p in zip(lengths, prompt_lengths)])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype("int64")
    return TokenizedSplit(ids=ids, weights=weights, offsets=offsets, prompt_lengths=prompt_lengths,
                          talk_ids=np.array([f"t{i}" for i in range(count)]), turns=np.ones(count, "int32"))  # fmt: skip


def prepare(root: Path) -> None:
    import keras
    import keras_hub

    from maeum import gemma

    records = json.loads((SAMPLE_DIR / "Training.json").read_text(encoding="utf-8"))
    texts = [u for r in records for u in r["talk"]["content"].values() if u.strip()]
    tokenizer = keras_hub.models.GemmaTokenizer(proto=gemma.train_tokenizer_proto(texts, TINY.vocabulary_size))
    assert tokenizer.vocabulary_size() == TINY.vocabulary_size
    keras.utils.set_random_seed(7)
    causal_lm = keras_hub.models.GemmaCausalLM(
        backbone=gemma.tiny_backbone(TINY, TINY.vocabulary_size),
        preprocessor=keras_hub.models.GemmaCausalLMPreprocessor(tokenizer, sequence_length=64),
    )
    causal_lm.save_to_preset(str(root / "base" / gemma.TINY_PRESET_DIR))
    gemma.write_base_pointer(root / "base", "tiny", gemma.TINY_PRESET_DIR)
    rng = np.random.default_rng(0)
    (root / "tokenized").mkdir()
    _synthetic_split(rng, 48, TINY.vocabulary_size).save(root / "tokenized" / "train.npz")
    _synthetic_split(rng, 16, TINY.vocabulary_size).save(root / "tokenized" / "validation.npz")
    (root / "params.yaml").write_text(RUN_PARAMS.format(raw_dir=SAMPLE_DIR, root=root))


# === The one-process worker: JAX on DEVICES simulated devices ===


def _sharding(variable) -> dict:
    """How a variable is laid out: the shape each device holds, and on how many devices."""
    value = variable.value
    return {"shard_shape": list(value.addressable_shards[0].data.shape), "devices": len(value.sharding.device_set)}


def worker(root: str) -> None:
    import keras

    from maeum import distribution, gemma, scoring
    from maeum.tokenized import TokenizedSplit
    from tasks import train

    root = Path(root)
    # A spy, not a mock: the real loader runs; the worker keeps the model run() trains to read its layout.
    loaded, load_base = [], gemma.load_base
    gemma.load_base = lambda *args, **kwargs: loaded.append(load_base(*args, **kwargs)) or loaded[-1]
    report = {"devices": keras.distribution.list_devices(), "process_index": distribution.process_index(), "runs": {}}
    for mode, mesh_shape in IN_WORKER.items():
        (root / mode).mkdir()
        os.chdir(root / mode)
        train.run(load_params(root / "params.yaml", {"train.distribution": mode, "train.mesh_shape": mesh_shape}))
        block = loaded[-1].causal_lm.backbone.get_layer("decoder_block_0")
        report["runs"][mode] = {
            "query_kernel": _sharding(block.attention.query_dense._kernel),  # the frozen kernel, not kernel + LoRA
            "embedding": _sharding(loaded[-1].causal_lm.backbone.get_layer("token_embedding").embeddings),
            "lora_a": _sharding(block.attention.query_dense.lora_kernel_a),
        }

    # Each run's adapter in turn on one base loaded on one device, with no distribution: its logits,
    # and its loss on the validation batches the distributed model scored after its last epoch.
    keras.distribution.set_distribution(None)
    single = load_base(root / "base")
    single.causal_lm.backbone.enable_lora(rank=2)
    params = load_params(root / "params.yaml")
    validation = TokenizedSplit.load(root / "tokenized" / "validation.npz")
    boundaries = train.boundaries_for(params.train, validation.lengths - 1)
    probe = {"token_ids": np.random.default_rng(1).integers(6, TINY.vocabulary_size, (8, 64)).astype("int32"),
             "padding_mask": np.ones((8, 64), bool)}  # fmt: skip
    for mode, folder in (("none", "none"), ("model", "model"), ("data", "host0")):
        run = json.loads((root / folder / params.train.run_file).read_text())
        gemma.load_lora(single.causal_lm, root / folder / params.train.out_dir / run["adapter"])
        report["runs"].setdefault(mode, {}).update({
            "reloaded_logits": np.asarray(single.causal_lm.predict(probe, verbose=0)).tolist(),
            "reloaded_val_loss": scoring.score_examples(single.causal_lm, validation, boundaries, 8).mean_loss,
            "reloaded_devices": _sharding(single.causal_lm.backbone.get_layer("token_embedding").embeddings)["devices"],
        })  # fmt: skip
    (root / "report.json").write_text(json.dumps(report))


# === Fixtures: inputs, the two-host data-parallel run, the worker ===


def jax_env(devices: int, **extra: str) -> dict[str, str]:
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **extra}  # fmt: skip
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("distribution")
    prepare(folder)
    return folder


@pytest.fixture(scope="module")
def two_hosts(root) -> list[subprocess.CompletedProcess]:
    """`python -m tasks.train` as process 0 and 1 of a data-parallel run, each in its own folder."""
    cluster = {"MAEUM_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}", "MAEUM_NUM_PROCESSES": str(HOSTS),
               "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"}  # fmt: skip
    overrides = root / "params_data.yaml"
    overrides.write_text((root / "params.yaml").read_text().replace("  backend: jax\n", "  backend: jax\n  distribution: data\n"))
    processes = []
    for process_id in range(HOSTS):
        folder = root / f"host{process_id}"
        folder.mkdir()
        env = jax_env(DEVICES // HOSTS, MAEUM_PROCESS_ID=str(process_id), **cluster)
        processes.append(subprocess.Popen([sys.executable, "-m", "tasks.train", "--params", str(overrides)], cwd=folder,
                                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))  # fmt: skip
    done = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    for process_id, result in enumerate(done):
        assert result.returncode == 0, f"process {process_id} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return done


@pytest.fixture(scope="module")
def report(root, two_hosts) -> dict:
    code = f"from tests.scale.test_distribution import worker; worker({str(root)!r})"
    env = jax_env(DEVICES, MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"worker failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    report = json.loads((root / "report.json").read_text())
    for mode, folder in (("none", "none"), ("model", "model"), ("data", "host0")):
        run = json.loads((root / folder / load_params(root / "params.yaml").train.run_file).read_text())
        report["runs"][mode].update(train_loss=[e["train_loss"] for e in run["epochs"]],
                                    val_loss=[e["val_loss"] for e in run["epochs"]], run=run)  # fmt: skip
    return report


# === Tests (slow: the runs above take about a minute on 2 cores) ===


@pytest.mark.slow
def test_jax_sees_the_simulated_devices(report, two_hosts):
    assert report["devices"] == [f"cpu:{i}" for i in range(DEVICES)] and report["process_index"] == 0
    for result in two_hosts:  # each host sees all 4 devices: its own 2 and the other's 2
        assert "distribution data over 4 device(s): mesh {'batch': 4}" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["data", "model"])
def test_distributed_training_gives_the_single_device_loss(report, mode):
    single, distributed = report["runs"]["none"], report["runs"][mode]
    relative = np.abs(np.subtract(distributed["train_loss"], single["train_loss"])) / single["train_loss"]
    print(f"{mode}: train_loss {distributed['train_loss']} vs {single['train_loss']}; max relative diff {relative.max():.2e}")
    np.testing.assert_allclose(distributed["train_loss"], single["train_loss"], rtol=LOSS_RTOL)
    np.testing.assert_allclose(distributed["val_loss"], single["val_loss"], rtol=LOSS_RTOL)
    assert single["train_loss"][1] < single["train_loss"][0]  # it trained


@pytest.mark.slow
def test_model_parallel_shards_the_base_and_replicates_lora(report):
    none, model = report["runs"]["none"], report["runs"]["model"]
    assert none["query_kernel"] == {"shard_shape": [4, 16, 8], "devices": 1}
    # (heads, hidden, head_dim) split as ("model", "batch", None) over the [2, 2] mesh.
    assert model["query_kernel"] == {"shard_shape": [2, 8, 8], "devices": DEVICES}
    assert model["embedding"] == {"shard_shape": [TINY.vocabulary_size // 2, TINY.hidden_dim // 2], "devices": DEVICES}
    assert model["lora_a"] == {"shard_shape": [4, 16, 2], "devices": DEVICES}  # added after loading: whole on each device


@pytest.mark.slow
def test_only_process_zero_writes_adapters_and_the_mlflow_run(root, two_hosts):
    chief, other = two_hosts
    assert sorted(p.name for p in (root / "host0" / "lora").iterdir()) == [
        "history.json", "loss_curve.png", "maeum_2_epoch1.lora.h5", "maeum_2_epoch2.lora.h5", "run.json"]  # fmt: skip
    assert (root / "host0" / "mlflow.db").exists() and "train: MLflow run" in chief.stdout
    assert list((root / "host1").iterdir()) == []  # no adapters, no checkpoints, no MLflow store
    assert "process 1 done; process 0 wrote the adapters" in other.stdout


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["data", "model"])
def test_adapter_saved_by_a_distributed_run_reloads_on_one_device(report, mode):
    run, single = report["runs"][mode], report["runs"]["none"]
    assert run["run"]["adapter"] == "maeum_2_epoch2.lora.h5" and run["run"]["run_id"]
    assert run["reloaded_devices"] == 1
    # On one device, the adapter scores the validation batches as the distributed model that saved it did ...
    np.testing.assert_allclose(run["reloaded_val_loss"], run["val_loss"][-1], rtol=LOSS_RTOL)
    # ... and gives the logits of the adapter trained on one device.
    difference = np.max(np.abs(np.subtract(run["reloaded_logits"], single["reloaded_logits"])))
    print(f"{mode}: max |logit diff| vs single-device adapter {difference:.2e}")
    assert difference < OUTPUT_ATOL


# === Checks of the configuration (pure) ===


def test_distribution_needs_the_jax_backend():
    with pytest.raises(DistributionError, match="needs the JAX backend"):
        check(TrainParams(distribution="data"), "tensorflow", 1)
    check(TrainParams(distribution="none"), "tensorflow", 1)


def test_model_mesh_must_hold_every_device():
    with pytest.raises(DistributionError, match="must equal the device count"):
        check(TrainParams(distribution="model", mesh_shape=(2, 4)), "jax", 4)
    check(TrainParams(distribution="model", mesh_shape=(2, 2)), "jax", 4)
    assert mesh_for(TrainParams(distribution="model"), 4) == (1, 4)


def test_batch_must_split_over_the_replicas():
    with pytest.raises(DistributionError, match="does not split over 3"):
        check(TrainParams(distribution="data", batch_size=8), "jax", 3)
    with pytest.raises(DistributionError, match="does not split over 4"):
        check(TrainParams(distribution="model", batch_size=2, mesh_shape=(4, 1)), "jax", 4)


def test_model_mesh_must_divide_heads_and_vocabulary():
    config = {"vocabulary_size": 1757, "num_query_heads": 4, "num_key_value_heads": 2, "intermediate_dim": 128,
              "hidden_dim": 64}  # fmt: skip
    with pytest.raises(DistributionError, match="vocabulary_size=1757 over model=4; num_key_value_heads=2 over model=4"):
        check_backbone(config, (1, 4))
    check_backbone({**config, "vocabulary_size": 256_000}, (2, 2))
    gemma2_2b = {"vocabulary_size": 256_000, "num_query_heads": 8, "num_key_value_heads": 4, "intermediate_dim": 18432,
                 "hidden_dim": 2304}  # fmt: skip
    check_backbone(gemma2_2b, (1, 4))


def test_cluster_comes_from_all_three_variables_or_none():
    assert cluster_from_env({}) is None
    full = {"MAEUM_COORDINATOR_ADDRESS": "10.0.0.1:1234", "MAEUM_NUM_PROCESSES": "2", "MAEUM_PROCESS_ID": "1"}
    assert cluster_from_env(full) == Cluster("10.0.0.1:1234", 2, 1)
    with pytest.raises(DistributionError, match="missing MAEUM_PROCESS_ID"):
        cluster_from_env({k: v for k, v in full.items() if k != "MAEUM_PROCESS_ID"})
    with pytest.raises(DistributionError, match="outside 0..1"):
        cluster_from_env({**full, "MAEUM_PROCESS_ID": "2"})


def test_params_default_to_one_device():
    train = load_params(REPO / "params.yaml").train
    assert train.distribution == "none" and train.mesh_shape == ()
    assert load_params(REPO / "params.yaml", {"train.mesh_shape": [1, 4]}).train.mesh_shape == (1, 4)
