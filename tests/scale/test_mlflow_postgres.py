"""The team tracking server (scripts/mlflow_team_server.sh): PostgreSQL + `mlflow server`, used by
a real training run and a registry promotion, then stopped.

Everything runs on free ports of 127.0.0.1 in a throwaway state folder. The train stage and the
registry are pointed at the server only through MLFLOW_TRACKING_URI, as a team member would.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

SCRIPT = REPO / "scripts" / "mlflow_team_server.sh"


def postgres_installed() -> bool:
    return bool(list(Path("/usr/lib/postgresql").glob("*/bin/initdb"))) or bool(shutil.which("initdb") and shutil.which("pg_ctl"))


def postgres_user_missing() -> bool:
    if os.geteuid() != 0:
        return False
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return True
    return False


requires_postgres = pytest.mark.skipif(
    not postgres_installed() or postgres_user_missing(),
    reason="PostgreSQL server binaries (initdb, pg_ctl) or, as root, the postgres user are missing: "
    "apt-get install -y postgresql (.ci/run installs it)",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def script(command: str, env: dict) -> str:
    done = subprocess.run([str(SCRIPT), command], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def team_server():
    # Not under pytest's tmp folder (mode 700): as root, PostgreSQL runs as `postgres` and must reach it.
    state = Path(tempfile.mkdtemp(prefix="maeum-mlflow-server-"))
    state.chmod(0o755)
    env = {**os.environ, "MLFLOW_SERVER_DIR": str(state), "MLFLOW_PORT": str(free_port()),
           "MLFLOW_PG_PORT": str(free_port()), "VENV": sys.prefix}  # fmt: skip
    try:
        started = script("start", env)
        exports = [line for line in started.splitlines() if line.startswith("export MLFLOW_TRACKING_URI=")]
        assert exports == [f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{env['MLFLOW_PORT']}"], started
        yield exports[0].split("=", 1)[1], state, env
    finally:
        stopped = script("stop", env)
        assert "PostgreSQL stopped" in stopped and "mlflow server (pid" in stopped, stopped
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def trained(team_server, pipeline_repo, tmp_path_factory):
    """One real train stage run of the tiny pipeline, logged through the server."""
    from maeum.config import load_params
    from tasks import train

    uri, _, _ = team_server
    repo, _ = pipeline_repo
    out = tmp_path_factory.mktemp("server-run")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.chdir(repo)  # the repository's params and stage outputs; this run writes its own out_dir
        params = load_params("params.yaml", {"train.out_dir": str(out / "lora"), "train.checkpoint_dir": str(out / "ckpt")})
        result = train.run(params)
    return repo, params, result


@requires_postgres
def test_server_is_up_only_on_localhost(team_server):
    _, _, env = team_server
    status = script("status", env)
    assert "mlflow server: running (pid" in status and f"http://127.0.0.1:{env['MLFLOW_PORT']}" in status
    assert f"postgresql: running on 127.0.0.1:{env['MLFLOW_PG_PORT']}" in status


@requires_postgres
def test_training_run_is_stored_in_postgres_and_its_files_behind_the_server(team_server, trained, tmp_path):
    import psycopg
    from mlflow import MlflowClient

    uri, state, env = team_server
    _, params, result = trained
    client = MlflowClient(uri)
    run = client.get_run(result.run_id)
    assert run.data.params["train.lora_rank"] == str(params.train.lora_rank)
    # Per-epoch curves are stepped by epoch, step-level ones by global step.
    assert [m.step for m in client.get_metric_history(result.run_id, "epoch_val_loss")] == list(range(1, params.train.epochs + 1))
    assert [m.step for m in client.get_metric_history(result.run_id, "val_loss")] == [e.global_step for e in result.epochs]

    adapter = result.epochs[-1].adapter
    assert adapter in [Path(f.path).name for f in client.list_artifacts(result.run_id, "lora")]
    fetched = client.download_artifacts(result.run_id, f"lora/{adapter}", str(tmp_path))
    assert Path(fetched).read_bytes() == (params.train.out_dir / adapter).read_bytes()
    assert list((state / "artifacts").rglob(adapter))  # the server keeps the files, clients only its URL

    # The records are rows of the server's PostgreSQL database, not of some local file.
    with psycopg.connect(host="127.0.0.1", port=int(env["MLFLOW_PG_PORT"]), dbname="mlflow", user="mlflow",
                         passfile=str(state / "pgpass")) as db:  # fmt: skip
        rank = db.execute("SELECT value FROM params WHERE run_uuid = %s AND key = 'train.lora_rank'", (result.run_id,)).fetchone()
    assert rank == (str(params.train.lora_rank),)


@requires_postgres
def test_registry_promotion_through_the_server(team_server, trained, monkeypatch):
    from mlflow import MlflowClient

    from maeum import registry, tracking
    from maeum.corpus import data_version

    uri, _, _ = team_server
    repo, params, result = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(repo)  # params' paths (base, safety rules) are relative to it
    name = params.tracking.registered_model
    card = f"# {name}\n\ntrained through the team server\n"
    model_uri = registry.log_reply_model(result.run_id, params, params.train.out_dir / result.epochs[-1].adapter, card)
    tags = {tracking.TAG_DATA_VERSION: data_version(list(params.data.split_paths.values())).md5,
            tracking.TAG_PARAMS_HASH: tracking.params_hash(params)}  # fmt: skip
    version = registry.register(model_uri, name, result.run_id, tags, card)
    event = registry.promote_version(name, version, by="reviewer", reason="first model")

    client = MlflowClient(uri)
    champion = client.get_model_version_by_alias(name, registry.CHAMPION_ALIAS)
    assert champion.version == version and champion.run_id == result.run_id
    assert champion.description == card and champion.tags[tracking.TAG_PARAMS_HASH] == tags[tracking.TAG_PARAMS_HASH]
    assert registry.alias_history(name) == [event] and event["by"] == "reviewer" and event["previous"] is None
