"""The reviewers' web page in headless Chromium (Playwright, Debian's browser): chat, rate, reset; the rating
in MLflow; and the MLflow UI showing a served turn with its feedback.

Screenshots go to a temporary folder, or to $MAEUM_SCREENSHOTS (e.g. docs/images) when it is set:
serve_chat.png (the page) and mlflow_traces.png (the trace in the MLflow UI with its feedback).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from maeum import feedback
from maeum.config import TrackingParams
from tests.serve.conftest import CRISIS, free_port, trace_of

CHROMIUM = Path("/usr/bin/chromium")
MLFLOW = Path(sys.executable).parent / "mlflow"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip
# The MLflow UI opens its assistant panel (a third of the page) on a first visit from localhost, so
# the browser reaches the UI server under another name that resolves to 127.0.0.1.
UI_HOST = "mlflow-ui.internal"
SCREENSHOTS_ENV = "MAEUM_SCREENSHOTS"
REPLY_TIMEOUT_MS = 60_000
UI_TIMEOUT_MS = 90_000  # the MLflow UI is a large single-page app: slow on a busy 2-core machine
UI_SERVER_TIMEOUT_S = 90
PAGE_MESSAGE = "요즘 회사 일이 너무 힘들어서 아무것도 하기 싫어"
NOTE = "공감이 느껴져요"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                              args=[*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {UI_HOST} 127.0.0.1"])  # fmt: skip
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get(SCREENSHOTS_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        return Path(folder)
    return tmp_path_factory.mktemp("screenshots")


def test_page_chat_rating_and_reset_reach_mlflow(browser, server, shots):
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1100, "height": 860}, locale="ko-KR")
    elsewhere = []

    def only_the_server(route):
        if route.request.url.startswith(server.url):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_server)
    page = context.new_page()
    page.goto(server.url)
    expect(page.get_by_test_id("model")).to_contain_text(server.health()["model"])

    page.get_by_test_id("input").fill(PAGE_MESSAGE)
    page.get_by_test_id("send").click()
    replies = page.get_by_test_id("reply")
    expect(replies).to_have_count(1, timeout=REPLY_TIMEOUT_MS)
    assert replies.first.locator(".text").inner_text().strip()
    rating = replies.first.get_by_test_id("rating")
    trace_id = rating.get_attribute("data-trace-id")
    rating.get_by_test_id("helpful-yes").click()
    rating.get_by_test_id("empathy-4").click()
    rating.get_by_test_id("note").fill(NOTE)
    rating.get_by_test_id("save-rating").click()
    expect(rating.get_by_test_id("rating-saved")).to_be_visible()

    page.get_by_test_id("input").fill(CRISIS)
    page.get_by_test_id("input").press("Enter")
    expect(replies).to_have_count(2, timeout=REPLY_TIMEOUT_MS)
    expect(replies.nth(1)).to_contain_text("109")
    expect(replies.nth(1)).to_contain_text("안전 안내")
    page.screenshot(path=str(shots / "serve_chat.png"))

    rated = trace_of(server, trace_id)
    ratings = {a.name: a for a in rated.info.assessments}
    assert ratings["helpful"].value is True and ratings["empathy"].value == 4 and ratings["helpful"].rationale == NOTE
    session = rated.info.trace_metadata["mlflow.trace.session"]
    assert session.startswith("web-")
    crisis_trace = trace_of(server, replies.nth(1).get_by_test_id("rating").get_attribute("data-trace-id"))
    assert crisis_trace.info.trace_metadata["mlflow.trace.session"] == session  # one conversation, one session

    page.get_by_test_id("reset").click()
    expect(replies).to_have_count(0)
    page.get_by_test_id("input").fill("다시 처음부터 이야기할게")
    page.get_by_test_id("send").click()
    expect(replies).to_have_count(1, timeout=REPLY_TIMEOUT_MS)
    after_reset = trace_of(server, replies.first.get_by_test_id("rating").get_attribute("data-trace-id"))
    assert after_reset.info.trace_metadata["mlflow.trace.session"] != session
    spans = {span.name: span for span in after_reset.data.spans}
    assert spans["chat_turn"].inputs["messages"] == [{"role": "user", "content": "다시 처음부터 이야기할게"}]
    assert elsewhere == []  # the page asked nothing of any other host
    context.close()


@contextlib.contextmanager
def mlflow_ui(tracking_uri: str, artifacts: Path):
    """`mlflow server` on the test store (job execution off: healthy in seconds); yields its URL under UI_HOST."""
    port = free_port()
    url = f"http://{UI_HOST}:{port}"
    command = [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", tracking_uri, "--artifacts-destination", str(artifacts),
               "--allowed-hosts", f"{UI_HOST}:{port}", "--cors-allowed-origins", url]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with (artifacts.parent / "mlflow-server.log").open("w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.perf_counter() + UI_SERVER_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.perf_counter() > deadline:
                    pytest.fail(f"mlflow server did not start:\n{(artifacts.parent / 'mlflow-server.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, 15)  # its own session: the server and the workers it started
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


def test_mlflow_ui_shows_a_served_turn_with_its_feedback(browser, server, shots, tmp_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    text = "동생이랑 말다툼해서 마음이 무거워"
    turn = server.chat(text, session_id="mlflow-ui-check")
    status, _, _ = server.post("/v1/feedback", {"trace_id": turn["maeum"]["trace_id"], "helpful": False, "empathy": 2,
                                                "note": "질문이 없어요", "reviewer": "tester"})  # fmt: skip
    assert status == 200
    experiment = MlflowClient(tracking_uri=server.tracking_uri).get_experiment_by_name(
        feedback.serve_experiment(TrackingParams()))
    (tmp_path / "artifacts").mkdir()
    with mlflow_ui(server.tracking_uri, tmp_path / "artifacts") as url:
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(f"{url}/#/experiments/{experiment.experiment_id}/traces")
        row = page.get_by_text(text).first
        row.wait_for(timeout=UI_TIMEOUT_MS)
        with contextlib.suppress(PlaywrightTimeout):  # a first-visit tip over the table
            page.get_by_text("Got it").click(timeout=3000)
        row.click()
        page.get_by_role("button", name="Assess").click()  # the feedback panel of the trace (its root span)
        expect(page.get_by_text("Feedback (2)")).to_be_visible(timeout=UI_TIMEOUT_MS)
        expect(page.get_by_text("empathy", exact=True).first).to_be_visible()
        expect(page.get_by_text("helpful", exact=True).first).to_be_visible()
        page.get_by_role("tab", name="Attributes").click()  # the turn's safety decision, prompt and model
        expect(page.get_by_text("maeum.safety", exact=True).first).to_be_visible()
        expect(page.get_by_text("maeum.model_version", exact=True).first).to_be_visible()
        page.screenshot(path=str(shots / "mlflow_traces.png"))
        page.close()
