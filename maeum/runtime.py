"""Process set-up shared by every entry point (stage commands, flows, chat, benchmarks).

Kept out of import time on purpose: importing a module of this project never changes the
environment or logging; only an entry point's `main` calls `prepare_process`.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import re
import sys
import threading

TELEMETRY_OFF = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
}
NOISY_LOGGERS = ("great_expectations", "absl", "h5py", "alembic", "mlflow.store.db.utils")
# What TensorFlow's native libraries print on a machine without a GPU, before Python's logging or
# TF_CPP_MIN_LOG_LEVEL can act (absl writes to stderr until it is initialised): notices, not errors.
CPU_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|oneDNN custom operations are on"
    r"|cudart_stub\.cc.*Could not find cuda drivers"
    r"|cuda_platform\.cc.*failed call to cuInit"
    r"|cuda_executor\.cc.*could not open file to read NUMA"
    r"|normalizer\.cc.*precompiled_charsmap is empty"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation placer already registered"
)
GPU_DEVICE = "/dev/nvidiactl"


def quiet_cpu_noise() -> None:
    """Drops TensorFlow's GPU-probing notices from this process's stderr on a machine without a GPU.

    The native libraries write to file descriptor 2 directly, so the descriptor is replaced by a
    pipe whose lines are copied to the real stderr unless they are one of the known notices
    (`CPU_NOISE`); everything else, real errors and tracebacks included, passes through. Nothing
    is changed on a machine with an NVIDIA device, where these lines can matter.
    """
    if os.path.exists(GPU_DEVICE) or getattr(quiet_cpu_noise, "active", False):
        return
    quiet_cpu_noise.active = True
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def copy() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as source, os.fdopen(real, "wb", buffering=0) as target:
            for line in iter(source.readline, b""):
                if not CPU_NOISE.search(line.decode("utf-8", "replace")):
                    target.write(line)

    copier = threading.Thread(target=copy, name="stderr-filter", daemon=True)
    copier.start()

    def finish() -> None:  # let the last lines (a traceback, say) through before the process ends
        sys.stderr.flush()
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        copier.join(timeout=5)

    atexit.register(finish)


def prepare_process(level: int = logging.INFO, backend: str | None = None) -> None:
    """Turns telemetry off, quiets chatty libraries, sets up plain logging and picks the Keras backend.

    Args:
        level: logging level.
        backend: `train.backend`; applied only if KERAS_BACKEND is not already set, and only
            takes effect when called before the first `import keras` of the process.
    """
    for name, value in TELEMETRY_OFF.items():
        os.environ.setdefault(name, value)
    if backend:
        os.environ.setdefault("KERAS_BACKEND", backend)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ banner hides real errors
    quiet_cpu_noise()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def stage_params(doc: str, argv: list[str] | None = None):
    """The shared edge of every `python -m tasks.<stage>`: `--params FILE`, loading, process set-up.

    Args:
        doc: the stage module's docstring, shown by --help.
        argv: command-line arguments (None: sys.argv).

    Returns:
        The loaded `Params`; the process is prepared for its Keras backend.
    """
    from maeum.config import ParamsError, load_params

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: ./params.yaml)")
    try:
        params = load_params(parser.parse_args(argv).params)
    except ParamsError as error:
        parser.exit(2, f"{error}\n")  # a message, not a traceback: the file or a key needs fixing
    prepare_process(backend=params.train.backend)
    return params
