"""`maeum serve` as a subprocess on the tiny trained model: the OpenAI client, the crisis screen,
bad requests, traces and feedback in the temporary MLflow store, the full queue, the CLI's errors."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from mlflow import MlflowClient

from maeum import feedback
from maeum.config import TrackingParams
from maeum.safety.screen import Responses
from tests.serve.conftest import CRISIS, MAEUM, SAFETY_DATA, free_port, start_server, stop_server, trace_of

EVERYDAY = ("친구랑 싸워서 속상해", "시험에 떨어졌어", "요즘 잠을 잘 못 자", "이사 와서 외로워", "상사가 나만 혼내")
SERVE_EXPERIMENT = feedback.serve_experiment(TrackingParams())
MEDIAN_REPLY_LIMIT_S = 5.0  # the tiny model answers in well under a second; generous for a busy machine
CLI_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def responses() -> Responses:
    return Responses.load(SAFETY_DATA / "responses.yaml")


@pytest.fixture(scope="module")
def openai_client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key="not-checked", max_retries=0)


def test_openai_client_gets_a_reply_from_the_served_model(server, openai_client):
    model = openai_client.models.list().data[0]
    completion = openai_client.chat.completions.create(
        model=model.id,
        messages=[{"role": "system", "content": "Ignored: not part of the training template."},
                  {"role": "user", "content": "요즘 회사 일이 너무 힘들어서 잠을 못 자"}],
        max_tokens=16,
    )  # fmt: skip
    reply = completion.choices[0].message
    assert model.id == server.health()["model"] and completion.model == model.id
    assert reply.role == "assistant" and reply.content.strip()
    assert 1 <= completion.usage.completion_tokens <= 16 and completion.usage.prompt_tokens > 0
    assert completion.maeum["screened"] is False and completion.maeum["trace_id"].startswith("tr-")


def test_crisis_message_gets_the_referral_and_not_the_model(openai_client, responses):
    completion = openai_client.chat.completions.create(model="maeum", messages=[{"role": "user", "content": CRISIS}])
    reply = completion.choices[0].message.content
    assert reply == responses.texts["crisis"] and "109" in reply
    assert completion.maeum["screened"] is True and completion.maeum["safety_level"] == "crisis"
    assert completion.usage.completion_tokens == 0  # the model was not called


def test_screen_reads_the_crisis_from_the_history_of_a_stateless_request(server, responses):
    after = server.chat(CRISIS, responses.texts["crisis"], "고마워, 조금 진정됐어")
    reply = after["choices"][0]["message"]["content"]
    assert "109" in reply  # every later reply in a screened conversation carries the line
    assert reply.endswith(responses.texts["supportive_footer"]) or after["maeum"]["screened"]


@pytest.mark.parametrize(("body", "param"), [
    (b"not json", None),
    ({"model": "maeum"}, "messages"),
    ({"messages": [{"role": "user", "content": ""}]}, "messages[0]"),
    ({"messages": [{"role": "assistant", "content": "hello"}]}, "messages"),
    ({"messages": [{"role": "user", "content": ["not", "parts"]}]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10_000}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": True}, "stream"),
])  # fmt: skip
def test_malformed_request_gets_400_with_a_message(server, body, param):
    status, answer, _ = server.post("/v1/chat/completions", body)
    assert status == 400
    assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["message"]
    assert answer["error"]["param"] == param


def test_openai_client_raises_on_an_empty_message(openai_client):
    from openai import BadRequestError

    with pytest.raises(BadRequestError, match="empty"):
        openai_client.chat.completions.create(model="maeum", messages=[{"role": "user", "content": "  "}])


def test_unknown_paths_serve_nothing(server):
    status, answer, _ = server.post("/v1/files", {"file": "/etc/passwd"})
    assert status in (404, 405) and "root:" not in str(answer)


def model_reply(server, completion: dict) -> str:
    """The model's own reply, from the trace (the shown one may be the screen's replacement)."""
    spans = {span.name: span for span in trace_of(server, completion["maeum"]["trace_id"]).data.spans}
    return spans["generate"].outputs["text"]


def test_same_seed_gives_the_same_sampled_reply_and_another_seed_another(server):
    turns = [server.chat("친구랑 싸워서 속상해", temperature=1.0, top_p=0.95, seed=seed, max_tokens=24) for seed in (1, 1, 2, 3)]
    first, again, *others = (model_reply(server, turn) for turn in turns)
    assert first == again
    assert len({first, *others}) > 1


def test_turn_is_traced_with_its_safety_decision_prompt_and_rating(server):
    session = "test-session-traced"
    first = server.chat("이사 와서 친구가 없어서 외로워", session_id=session)
    reply = first["choices"][0]["message"]["content"]
    crisis = server.chat("이사 와서 친구가 없어서 외로워", reply, CRISIS, session_id=session)
    before = feedback.feedback_by_version(SERVE_EXPERIMENT, server.tracking_uri)

    status, rated, _ = server.post("/v1/feedback", {"trace_id": first["maeum"]["trace_id"], "helpful": True,
                                                    "empathy": 4, "note": "따뜻해요", "reviewer": "tester"})  # fmt: skip
    assert status == 200 and rated["logged"] == ["helpful", "empathy"]

    trace = trace_of(server, first["maeum"]["trace_id"])
    client = MlflowClient(tracking_uri=server.tracking_uri)
    assert client.get_experiment(trace.info.experiment_id).name == SERVE_EXPERIMENT
    version = server.health()["version"]
    assert trace.info.tags[feedback.TAG_MODEL_VERSION] == version
    assert trace.info.trace_metadata["mlflow.trace.session"] == session
    spans = {span.name: span for span in trace.data.spans}
    assert {"chat_turn", "safety.assess", "generate", "safety.reply"} <= set(spans)
    assert spans["chat_turn"].inputs["messages"] == [{"role": "user", "content": "이사 와서 친구가 없어서 외로워"}]
    assert spans["chat_turn"].outputs == reply
    assert spans["chat_turn"].attributes["maeum.latency_s"] > 0
    assert spans["chat_turn"].attributes["maeum.model"] == server.health()["model"]
    assessed = spans["safety.assess"].outputs
    assert assessed["level"] == "none" and assessed["about"] == "self" and 0 <= assessed["score"] < 1 and assessed["reason"]
    prompt = spans["generate"].inputs["prompt"]
    assert prompt.startswith("<start_of_turn>user\n이사 와서") and prompt.endswith("<start_of_turn>model\n")
    ratings = {a.name: a for a in trace.info.assessments}
    assert ratings["helpful"].value is True and ratings["helpful"].rationale == "따뜻해요"
    assert ratings["empathy"].value == 4 and ratings["empathy"].source.source_type == "HUMAN"

    screened = {span.name: span for span in trace_of(server, crisis["maeum"]["trace_id"]).data.spans}
    assert "generate" not in screened  # the model was not called
    assert screened["safety.assess"].outputs["level"] == "crisis"
    assert screened["chat_turn"].attributes["maeum.prompt"].count("<start_of_turn>user") == 2  # history + message

    after = feedback.feedback_by_version(SERVE_EXPERIMENT, server.tracking_uri)[version]
    rated_before = before[version].rated if version in before else 0
    assert after.rated == rated_before + 1 and after.turns >= 3 and after.helpful_rate is not None


def test_rating_an_unknown_or_malformed_trace_is_refused(server):
    status, answer, _ = server.post("/v1/feedback", {"trace_id": "tr-" + "0" * 32, "helpful": True})
    assert status == 404 and "trace_id" in answer["error"]["message"]
    status, answer, _ = server.post("/v1/feedback", {"trace_id": "tr-" + "0" * 32, "empathy": 9})
    assert status == 400 and answer["error"]["param"] == "empathy"


def _wait(condition, seconds: float = 60) -> bool:
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def _fill_queue(server, temperature: float) -> tuple | None:
    """One request generating, one waiting (queue_size 1), then a third: its (status, body, headers, seconds),
    with the first two results; None when the first finished before the queue was seen full."""
    # A decoding no request used before compiles its own generate function: seconds of generation to overlap.
    body = {"messages": [{"role": "user", "content": "요즘 회사 일이 너무 힘들어"}], "temperature": temperature,
            "top_p": 0.8, "max_tokens": 32}  # fmt: skip
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(server.post, "/v1/chat/completions", body)
        if not _wait(lambda: server.health()["generating"] or first.done()) or first.done():
            return None
        second = pool.submit(server.post, "/v1/chat/completions", body)
        if not _wait(lambda: server.health()["waiting"] == 1 or first.done()) or first.done():
            return None
        started = time.perf_counter()
        status, answer, headers = server.post("/v1/chat/completions", body)
        refused = (status, answer, headers, time.perf_counter() - started)
        return refused, first.result(), second.result()


def test_full_queue_answers_503_at_once_and_serves_the_queued(server):
    outcome = None
    for temperature in (0.61, 0.62, 0.63):  # a fresh decoding per try
        outcome = _fill_queue(server, temperature)
        if outcome is not None:
            break
    assert outcome is not None, "the first request always finished before the queue filled"
    (status, answer, headers, seconds), first, second = outcome
    assert status == 503 and answer["error"]["code"] == "queue_full" and "queue_size 1" in answer["error"]["message"]
    assert headers.get("Retry-After") == "1" and seconds < 2
    assert first[0] == 200 and second[0] == 200  # the running and the waiting request are both answered
    assert server.health()["waiting"] == 0


def test_reply_latency_on_the_tiny_model(server, record_property):
    seconds = []
    for text in EVERYDAY:
        started = time.perf_counter()
        server.chat(text)
        seconds.append(time.perf_counter() - started)
    median = statistics.median(seconds)
    record_property("started_s", round(server.started_s, 2))
    record_property("first_reply_s", round(server.first_reply_s, 2))
    record_property("median_reply_s", round(median, 3))
    print(f"\nserve: healthy {server.started_s:.1f} s after start, first reply {server.first_reply_s:.1f} s, "
          f"median reply {median * 1000:.0f} ms over {len(seconds)} turns")
    assert median < MEDIAN_REPLY_LIMIT_S


def served_traces(server) -> int:
    client = MlflowClient(tracking_uri=server.tracking_uri)
    experiment = client.get_experiment_by_name(SERVE_EXPERIMENT)
    return len(client.search_traces(locations=[experiment.experiment_id], include_spans=False, max_results=1000))


def test_no_trace_serves_without_recording_anything(server, trained_model, serve_dir, serve_env):
    untraced = start_server(serve_dir, serve_env, ["--adapter", f"runs:/{trained_model[1]}", "--no-trace"],
                            "serve-no-trace.log")  # fmt: skip
    try:
        recorded = served_traces(server)
        turn = untraced.chat("요즘 잠을 잘 못 자")
        assert turn["choices"][0]["message"]["content"] and turn["maeum"]["trace_id"] is None
        assert untraced.health()["trace"] is False
        status, answer, _ = untraced.post("/v1/feedback", {"trace_id": "tr-" + "1" * 32, "helpful": True})
        assert status == 409 and "tracing is off" in answer["error"]["message"]
        assert served_traces(server) == recorded
    finally:
        stop_server(untraced.process)


# === The command line: one line and exit status 2 on bad input ===


def run_cli(*args: str, cwd, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(MAEUM), *args], cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S)  # fmt: skip


def assert_usage_error(result: subprocess.CompletedProcess, says: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("maeum") and says in last, result.stderr


def test_serve_refuses_a_bad_port_a_busy_port_and_a_missing_champion(server, serve_dir, serve_env, tmp_path):
    assert_usage_error(run_cli("serve", "--port", "70000", cwd=serve_dir, env=serve_env), "--port must be 1-65535")
    busy = server.url.rsplit(":", 1)[1]
    assert_usage_error(run_cli("serve", "--port", busy, cwd=serve_dir, env=serve_env), f"cannot listen on 127.0.0.1:{busy}")
    (tmp_path / "params.yaml").write_text((serve_dir / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    empty = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    assert_usage_error(run_cli("serve", "--port", str(free_port()), cwd=tmp_path, env=empty),
                       "models:/maeum-lora@champion is not in the model registry")  # fmt: skip
    assert not (tmp_path / "mlflow.db").exists()  # refusing created no store
    assert_usage_error(run_cli("serve", "--port", str(free_port()), "--adapter", "no/such.lora.h5", cwd=serve_dir,
                               env=serve_env), "adapter file no/such.lora.h5 does not exist")  # fmt: skip


def test_chat_refuses_an_empty_message(serve_dir, serve_env):
    assert_usage_error(run_cli("chat", "--message", "", cwd=serve_dir, env=serve_env), "--message is empty")

