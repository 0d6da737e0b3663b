"""Training on more than one device: the Keras distribution API on the JAX backend.

`train.distribution` picks how the LoRA fine-tuning uses the devices JAX sees:

    none   one device (the default; any backend)
    data   `keras.distribution.DataParallel`: the model is replicated on every device and each
           global batch is split over them; the loss is that of the same global batch on one device
    model  `keras.distribution.ModelParallel` on a `(batch, model)` mesh of `train.mesh_shape`,
           with keras-hub's `GemmaBackbone.get_layout_map`: attention heads, the feed-forward
           width and the vocabulary are split over `model`, the batch over `batch`

The distribution is set globally before the base is loaded, so `from_preset` creates every
variable already laid out on the mesh; LoRA factors added later are replicated.

More than one host: every host runs the same command with the same params and data, plus
three environment variables read by `cluster_from_env` (process 0's address is the coordinator):

    MAEUM_COORDINATOR_ADDRESS=10.0.0.1:1234 MAEUM_NUM_PROCESSES=2 MAEUM_PROCESS_ID=0 python -m tasks.train
    MAEUM_COORDINATOR_ADDRESS=10.0.0.1:1234 MAEUM_NUM_PROCESSES=2 MAEUM_PROCESS_ID=1 python -m tasks.train

`initialize_cluster` then calls `jax.distributed.initialize` (through `keras.distribution.initialize`)
before any computation; `list_devices()` returns the devices of all hosts. Only process 0
(`is_chief()`) writes adapters, MLflow records and DVC outputs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maeum.config import TrainParams

log = logging.getLogger(__name__)

MESH_AXES = ("batch", "model")  # the axis names GemmaBackbone.get_layout_map shards over
COORDINATOR_ENV = "MAEUM_COORDINATOR_ADDRESS"  # host:port of process 0, reachable from every host
NUM_PROCESSES_ENV = "MAEUM_NUM_PROCESSES"
PROCESS_ID_ENV = "MAEUM_PROCESS_ID"
PRESET_CONFIG = "config.json"  # in a keras-hub preset folder: the backbone's constructor arguments


class DistributionError(ValueError):
    """`train.distribution` cannot run as configured here; the message says what to change."""


@dataclass(frozen=True)
class Cluster:
    """One process of a multi-host run."""

    coordinator_address: str
    num_processes: int
    process_id: int


# === Checks (pure) ===


def mesh_for(train: TrainParams, device_count: int) -> tuple[int, int]:
    """The `(batch, model)` mesh shape: `train.mesh_shape`, or every device on `model` when it is empty."""
    if not train.mesh_shape:
        return (1, device_count)
    if len(train.mesh_shape) != len(MESH_AXES) or min(train.mesh_shape) < 1:
        raise DistributionError(f"train.mesh_shape must be two positive sizes [batch, model], got {list(train.mesh_shape)}")
    return (train.mesh_shape[0], train.mesh_shape[1])


def check(train: TrainParams, backend: str, device_count: int) -> None:
    """Refuses a distribution that cannot run: wrong backend, mesh size, or batch size.

    Args:
        train: the `train` section (distribution, mesh_shape, batch_size).
        backend: the Keras backend of this process.
        device_count: devices JAX sees (all hosts' devices in a multi-host run).

    Raises:
        DistributionError: with what to change.
    """
    if train.distribution == "none":
        return
    if backend != "jax":
        raise DistributionError(
            f"train.distribution={train.distribution} needs the JAX backend, but Keras runs on {backend}: "
            f"set train.backend: jax in params.yaml (or KERAS_BACKEND=jax before the process starts)"
        )
    if train.distribution == "data":
        replicas = device_count
    else:
        batch, model = mesh_for(train, device_count)
        if batch * model != device_count:
            raise DistributionError(
                f"train.mesh_shape {[batch, model]} holds {batch * model} devices but {device_count} are visible: "
                f"the product of [batch, model] must equal the device count"
            )
        replicas = batch
    if train.batch_size % replicas:
        raise DistributionError(
            f"train.batch_size {train.batch_size} does not split over {replicas} data-parallel replicas: "
            f"use a multiple of {replicas}"
        )


def check_backbone(config: Mapping[str, Any], mesh: tuple[int, int]) -> None:
    """Refuses a model-parallel mesh that does not divide the backbone's sharded dimensions.

    JAX only shards evenly; without this check the failure is an `IndivisibleError` deep inside
    `from_preset`. Gemma2 2B (8 query / 4 key-value heads, vocabulary 256,000) divides by 1, 2 or 4.

    Args:
        config: the backbone's constructor arguments (a preset's `config.json` "config").
        mesh: the `(batch, model)` mesh shape.
    """
    batch, model = mesh
    # What GemmaBackbone.get_layout_map splits: embeddings (vocabulary x hidden), attention kernels
    # (heads x hidden x head_dim), feed-forward kernels (hidden x intermediate_dim / 2, its gate width).
    over_model = {
        "vocabulary_size": config["vocabulary_size"],
        "num_query_heads": config["num_query_heads"],
        "num_key_value_heads": config["num_key_value_heads"],
        "intermediate_dim / 2": config["intermediate_dim"] // 2,
    }
    over_batch = {"hidden_dim": config["hidden_dim"]}
    bad = [f"{name}={size} over model={model}" for name, size in over_model.items() if size % model]
    bad += [f"{name}={size} over batch={batch}" for name, size in over_batch.items() if size % batch]
    if bad:
        raise DistributionError(f"train.mesh_shape {[batch, model]} does not divide the backbone: {'; '.join(bad)}")


def cluster_from_env(environ: Mapping[str, str]) -> Cluster | None:
    """The multi-host coordinates from the `MAEUM_*` variables, or None for a single process.

    Raises:
        DistributionError: only some of the three are set, or they are not numbers in range.
    """
    names = (COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV)
    present = [name for name in names if environ.get(name)]
    if not present:
        return None
    if len(present) != len(names):
        missing = [name for name in names if name not in present]
        raise DistributionError(f"multi-host training needs all of {', '.join(names)}; missing {', '.join(missing)}")
    try:
        cluster = Cluster(environ[COORDINATOR_ENV], int(environ[NUM_PROCESSES_ENV]), int(environ[PROCESS_ID_ENV]))
    except ValueError:
        raise DistributionError(f"{NUM_PROCESSES_ENV} and {PROCESS_ID_ENV} must be integers") from None
    if not 0 <= cluster.process_id < cluster.num_processes:
        raise DistributionError(f"{PROCESS_ID_ENV}={cluster.process_id} is outside 0..{cluster.num_processes - 1}")
    return cluster


# === Edge: JAX and Keras state ===


def initialize_cluster(cluster: Cluster | None) -> None:
    """Joins this process to a multi-host JAX run; must come before any JAX computation."""
    if cluster is None:
        return
    import keras

    if keras.backend.backend() != "jax":
        raise DistributionError(f"multi-host training ({COORDINATOR_ENV} is set) needs the JAX backend")
    log.info("joining %d-process run as process %d (coordinator %s)", cluster.num_processes, cluster.process_id,
             cluster.coordinator_address)  # fmt: skip
    keras.distribution.initialize(cluster.coordinator_address, cluster.num_processes, cluster.process_id)


def preset_backbone_config(preset_dir: Path) -> dict[str, Any]:
    """The backbone arguments saved in a keras-hub preset folder."""
    return json.loads((Path(preset_dir) / PRESET_CONFIG).read_text(encoding="utf-8"))["config"]


def apply(train: TrainParams, backbone_config: Mapping[str, Any] | None = None) -> Any:
    """Checks and sets the global Keras distribution for `train.distribution`; call before building the model.

    Args:
        train: the `train` section.
        backbone_config: the base's backbone arguments, checked against a model-parallel mesh.

    Returns:
        The `keras.distribution.Distribution` now in effect, or None for `none`.
    """
    import keras

    if train.distribution == "none":
        keras.distribution.set_distribution(None)
        return None
    backend = keras.backend.backend()
    if backend != "jax":
        check(train, backend, device_count=0)  # raises: no JAX devices to count
    devices = keras.distribution.list_devices()
    check(train, backend, len(devices))
    if train.distribution == "data":
        distribution = keras.distribution.DataParallel(devices=devices)
    else:
        import keras_hub

        mesh_shape = mesh_for(train, len(devices))
        if backbone_config is not None:
            check_backbone(backbone_config, mesh_shape)
        mesh = keras.distribution.DeviceMesh(shape=mesh_shape, axis_names=MESH_AXES, devices=devices)
        layout_map = keras_hub.models.GemmaBackbone.get_layout_map(mesh, model_parallel_dim_name=MESH_AXES[1],
                                                                   data_parallel_dim_name=MESH_AXES[0])  # fmt: skip
        distribution = keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name=MESH_AXES[0])
    keras.distribution.set_distribution(distribution)
    log.info("distribution %s over %d device(s): mesh %s", train.distribution, len(devices),
             dict(zip(distribution.device_mesh.axis_names, distribution.device_mesh.shape)))  # fmt: skip
    return distribution


def batch_replicas() -> int:
    """How many ways the current distribution splits a batch (1 without one): batch sizes must divide by it."""
    import keras

    current = keras.distribution.distribution()
    return 1 if current is None else current.num_model_replicas


def process_index() -> int:
    """This process's index in a multi-host run (0 when there is only one, and on other backends)."""
    import keras

    if keras.backend.backend() != "jax":
        return 0
    import jax

    return jax.process_index()


def process_count() -> int:
    import keras

    if keras.backend.backend() != "jax":
        return 1
    import jax

    return jax.process_count()


def is_chief() -> bool:
    """True in the one process that writes files, MLflow records and DVC outputs."""
    return process_index() == 0
