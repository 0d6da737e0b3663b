"""Process set-up shared by every entry point (stage commands, flows, chat, benchmarks).

Kept out of import time on purpose: importing a module of this project never changes the
environment or logging; only an entry point's `main` calls `prepare_process`.
"""

from __future__ import annotations

import argparse
import logging
import os

TELEMETRY_OFF = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
}
NOISY_LOGGERS = ("great_expectations", "absl", "h5py", "alembic", "mlflow.store.db.utils")


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
