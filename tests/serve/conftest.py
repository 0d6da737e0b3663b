"""A tiny trained model and its crisis screen, built once per session in a temporary folder, and
`maeum serve` started on it as a subprocess with its own MLflow store.

The stages run in-process through `tasks.<stage>.run(params)` as `tests/model/conftest.py` does,
with smaller params (one short epoch, shorter sequences) so the whole build stays near a minute on
2 cores; the safety stage runs too, because chat and serve refuse to start without `models/safety`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest

from maeum.config import Params, load_params
from tests.conftest import REPO, SAMPLE_DIR, working_dir

MAEUM = Path(sys.executable).parent / "maeum"
SAFETY_DATA = REPO / "data" / "safety"
SERVE_PARAMS = """\
data:
  raw_dir: corpus               # a slice of the sample corpus (CORPUS_SLICE), written by the fixture
model:
  tiny:
    vocabulary_size: 1000
    pretrain_epochs: 2
train:
  sequence_length: 96
  padding: fixed                # one compiled shape
  batch_size: 16
  sample_max_new_tokens: 8
  tiny:                         # params.yaml's tiny recipe, fewer epochs
    lora_rank: 8
    lora_targets: all
    learning_rate: 2.0e-3
    epochs: 3
safety:                         # the project's rules, texts and training set; held-out sets sliced (scoring is slow)
  rules_file: {safety}/rules.yaml
  responses_file: {safety}/responses.yaml
  lexicon_file: {safety}/lexicon.yaml
  train_file: {safety}/train.tsv
  heldout_file: heldout.tsv
  replies_file: {safety}/replies.tsv
  replies_heldout_file: replies_heldout.tsv
chat:
  max_new_tokens: 24
serve:
  queue_size: 1                 # one generating and one waiting: the third concurrent request gets 503
  max_tokens: 32
"""
CORPUS_SLICE = {"Training.json": 160, "Validation.json": 32}  # dialogues kept: enough to learn the template
HELDOUT_STEP = 6  # every 6th held-out line: every category stays, scoring takes a sixth of the time
FIRST_MESSAGE = "요즘 회사 일이 너무 힘들어"
CRISIS = "오늘 밤에 죽으려고 약을 다 모아놨어"
ROOT_SPAN = "chat_turn"
TRACE_WRITE_TIMEOUT_S = 15
START_TIMEOUT_S = 180  # model load, screen load and the first compile on a busy 2-core machine


@pytest.fixture(scope="session")
def serve_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("serve")
    (folder / "corpus").mkdir()
    for name, count in CORPUS_SLICE.items():
        dialogues = json.loads((SAMPLE_DIR / name).read_text(encoding="utf-8"))[:count]
        (folder / "corpus" / name).write_text(json.dumps(dialogues, ensure_ascii=False), encoding="utf-8")
    for name in ("heldout.tsv", "replies_heldout.tsv"):
        header, *rows = (SAFETY_DATA / name).read_text(encoding="utf-8").splitlines()
        (folder / name).write_text("\n".join([header, *rows[::HELDOUT_STEP]]) + "\n", encoding="utf-8")
    (folder / "params.yaml").write_text(SERVE_PARAMS.format(safety=SAFETY_DATA), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def serve_env(serve_dir) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": f"sqlite:///{serve_dir / 'mlflow.db'}"}


@pytest.fixture(scope="session")
def trained_model(serve_dir, serve_env) -> tuple[Params, str]:
    """The tiny model trained in `serve_dir`, and its MLflow training run id."""
    from tasks import model, preprocess, safety, tokenize, train

    with working_dir(serve_dir, serve_env):
        params = load_params("params.yaml")
        preprocess.run(params)
        model.run(params)
        tokenize.run(params)
        result = train.run(params)
        safety.run(params)
    return params, result.run_id


def trace_of(server: Server, trace_id: str):
    """The finished trace. The server writes spans and the trace's own record (tags, session) in the
    background, in any order: wait for the record to be final and the root span to be there."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.tracing.constant import TraceMetadataKey

    client = MlflowClient(tracking_uri=server.tracking_uri)
    deadline = time.perf_counter() + TRACE_WRITE_TIMEOUT_S
    while time.perf_counter() < deadline:
        with contextlib.suppress(MlflowException):
            trace = client.get_trace(trace_id)
            final = trace.info.trace_metadata.get(TraceMetadataKey.TRACE_INFO_FINALIZED) == "true"
            if final and any(span.name == ROOT_SPAN for span in trace.data.spans):
                return trace
        time.sleep(0.1)
    pytest.fail(f"no finished trace {trace_id} in {server.tracking_uri} after {TRACE_WRITE_TIMEOUT_S} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


@dataclass
class Server:
    """A running `maeum serve` and what it was started with."""

    url: str
    process: subprocess.Popen
    folder: Path
    tracking_uri: str
    log: Path
    started_s: float  # from process start to a healthy /health
    first_reply_s: float | None = None  # from process start to the first reply received

    def health(self) -> dict:
        return get_json(f"{self.url}/health")

    def post(self, path: str, body, timeout: float = 120) -> tuple[int, dict, Message]:
        """(status, JSON body, headers) of a POST; 4xx and 5xx are returned, not raised."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read()), response.headers
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read()), error.headers

    def chat(self, *texts: str, **fields) -> dict:
        """One turn: `texts` alternate user, assistant, ..., user; returns the completion (fails on an error)."""
        roles = ("user", "assistant")
        messages = [{"role": roles[i % 2], "content": text} for i, text in enumerate(texts)]
        status, body, _ = self.post("/v1/chat/completions", {"model": "maeum", "messages": messages, **fields})
        assert status == 200, body
        return body


def start_server(folder: Path, env: dict[str, str], args: list[str], log_name: str) -> Server:
    """Starts `maeum serve` and waits until /health answers (or the process dies: then fails with its log)."""
    port = free_port()
    log = folder / log_name
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen([str(MAEUM), "serve", "--port", str(port), *args], cwd=folder,
                                   env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    while time.perf_counter() - started < START_TIMEOUT_S:
        if process.poll() is not None:
            pytest.fail(f"maeum serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            get_json(f"{url}/health", timeout=2)
            return Server(url, process, folder, env["MLFLOW_TRACKING_URI"], log, time.perf_counter() - started)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.25)
    stop_server(process)
    pytest.fail(f"maeum serve was not healthy within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def server(trained_model, serve_dir, serve_env):
    _, run_id = trained_model
    running = start_server(serve_dir, serve_env, ["--adapter", f"runs:/{run_id}"], "serve.log")
    launched = time.perf_counter() - running.started_s
    running.chat(FIRST_MESSAGE)
    running.first_reply_s = time.perf_counter() - launched
    yield running
    stop_server(running.process)
