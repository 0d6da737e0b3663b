"""The server's request checks, decoding choice, queue and feedback summary: no model needed."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from maeum import feedback
from maeum.config import ChatParams, TrackingParams
from maeum.serve import (
    BadRequest,
    Decoding,
    GenerationQueue,
    QueueFull,
    decoding_for,
    page_html,
    parse_chat_request,
    parse_rating,
)

CAP, DEFAULT = 32, 24
TRACE = "tr-" + "a" * 32


def parse(body):
    return parse_chat_request(body, CAP, DEFAULT)


def test_conversation_becomes_session_history_without_system_messages():
    request = parse({"model": "anything", "messages": [
        {"role": "system", "content": "You are kind."},
        {"role": "user", "content": "요즘 잠을 못 자"},
        {"role": "assistant", "content": "많이 힘드시겠어요."},
        {"role": "user", "content": [{"type": "text", "text": "회사 "}, {"type": "text", "text": "때문이야"}]},
    ]})  # fmt: skip
    assert request.history == (("user", "요즘 잠을 못 자"), ("model", "많이 힘드시겠어요."))
    assert request.text == "회사 때문이야"
    assert request.messages[0] == {"role": "system", "content": "You are kind."}  # kept for the trace
    assert request.max_tokens == DEFAULT


def test_max_tokens_defaults_to_chat_and_never_exceeds_the_cap():
    assert parse_chat_request({"messages": [{"role": "user", "content": "hi"}]}, CAP, 128).max_tokens == CAP
    assert parse({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 5}).max_tokens == 5


@pytest.mark.parametrize(("body", "says"), [
    ([], "JSON object"),
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "user", "content": "   "}]}, "empty"),
    ({"messages": [{"role": "user", "content": 3}]}, "content"),
    ({"messages": [{"role": "user"}]}, "content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}, "text parts"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "role"),
    ({"messages": [{"content": "x"}]}, "role"),
    ({"messages": [{"role": "system", "content": "only a system message"}]}, "nothing to answer"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}, "nothing to answer"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": CAP + 1}, "between 1 and 32"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "10"}, "integer"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": True}, "integer"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 3}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_p": 0}, "top_p"),
    ({"messages": [{"role": "user", "content": "hi"}], "seed": -1}, "seed"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": True}, "streaming"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n=1"),
    ({"messages": [{"role": "user", "content": "hi"}], "model": 5}, "model"),
    ({"messages": [{"role": "user", "content": "hi"}], "session_id": "../../etc"}, "session_id"),
    ({"messages": [{"role": "user", "content": "x" * 8001}]}, "longer"),
])  # fmt: skip
def test_bad_requests_are_refused_with_a_message(body, says):
    with pytest.raises(BadRequest, match=says):
        parse(body)


def test_decoding_follows_chat_defaults_unless_the_request_samples():
    defaults = ChatParams(sampler="greedy", temperature=1.0, top_k=5, top_p=0.9)
    assert decoding_for(None, None, defaults) == Decoding("greedy", 1.0, 5, 0.9)
    assert decoding_for(0.0, None, defaults).sampler == "greedy"
    assert decoding_for(0.7, None, defaults) == Decoding("random", 0.7, 5, 1.0)
    assert decoding_for(0.7, 0.5, defaults) == Decoding("top_p", 0.7, 5, 0.5)
    assert decoding_for(None, 0.5, defaults) == Decoding("top_p", 1.0, 5, 0.5)


def test_rating_needs_a_trace_and_a_score():
    rating = parse_rating({"trace_id": TRACE, "helpful": False, "empathy": 2, "note": "  차가워요 ", "reviewer": "kim"})
    assert (rating.helpful, rating.empathy, rating.note, rating.reviewer) == (False, 2, "차가워요", "kim")
    for body, says in (({"helpful": True}, "trace_id"), ({"trace_id": "tr-../x", "helpful": True}, "trace_id"),
                       ({"trace_id": TRACE}, "helpful and/or empathy"), ({"trace_id": TRACE, "empathy": 6}, "empathy"),
                       ({"trace_id": TRACE, "helpful": "yes"}, "helpful"),
                       ({"trace_id": TRACE, "empathy": 3, "note": "x" * 2001}, "note")):  # fmt: skip
        with pytest.raises(BadRequest, match=says):
            parse_rating(body)


def test_queue_runs_one_job_at_a_time_and_refuses_beyond_its_size():
    release = threading.Event()
    running, most = [0], [0]

    def job(seconds):
        running[0] += 1
        most[0] = max(most[0], running[0])
        release.wait(5) if seconds is None else time.sleep(seconds)
        running[0] -= 1
        return seconds

    async def scenario():
        queue = GenerationQueue(queue_size=1)
        first = asyncio.create_task(queue.run(job, None))  # holds the model until released
        while not queue.running:
            await asyncio.sleep(0.01)
        second = asyncio.create_task(queue.run(job, 0.01))
        while queue.waiting < 1:
            await asyncio.sleep(0.01)
        with pytest.raises(QueueFull, match="1 waiting"):
            await queue.run(job, 0.01)
        release.set()
        results = await asyncio.gather(first, second)
        queue.close()
        return results, queue.admitted

    results, admitted = asyncio.run(scenario())
    assert results == [None, 0.01] and most[0] == 1 and admitted == 0


def test_latest_rating_of_a_turn_counts_once_per_version():
    turns = [
        ("maeum-lora/1", feedback.latest_ratings([("helpful", False, 1), ("helpful", True, 2), ("empathy", 4, 1)])),
        ("maeum-lora/1", feedback.latest_ratings([("empathy", 2, 5), ("other", 1, 9)])),
        ("maeum-lora/1", {}),
        ("maeum-lora/2", feedback.latest_ratings([("helpful", False, 3)])),
    ]
    summary = feedback.summarise(turns)
    assert summary["maeum-lora/1"] == feedback.VersionFeedback("maeum-lora/1", turns=3, rated=2, helpful_rate=1.0,
                                                               mean_empathy=3.0)  # fmt: skip
    assert summary["maeum-lora/2"].helpful_rate == 0.0 and summary["maeum-lora/2"].mean_empathy is None


def test_feedback_of_a_store_that_does_not_exist_is_empty_and_creates_nothing(tmp_path):
    store = tmp_path / "mlflow.db"
    assert feedback.feedback_by_version(feedback.serve_experiment(TrackingParams()), f"sqlite:///{store}") == {}
    assert not store.exists()


def test_page_loads_nothing_from_the_network():
    page = page_html()
    assert "<script>" in page and "/v1/chat/completions" in page and "/v1/feedback" in page
    for remote in ("src=\"http", "href=\"http", "src='http", "@import", "url(http", "//cdn"):
        assert remote not in page
