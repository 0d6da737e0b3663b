"""`maeum serve`: the chat model behind an OpenAI-compatible endpoint, a reviewers' web page, and traces.

    POST /v1/chat/completions   OpenAI chat format (non-streaming); the official `openai` client works
    GET  /v1/models             the served model version
    POST /v1/feedback           a reviewer's rating of one reply -> MLflow feedback on its trace
    GET  /health                ready, model, queue
    GET  /                      the web chat page (maeum/web/chat.html, no network needed)

Each request is one turn of `maeum.chat.ChatSession`: the request's earlier user/assistant
messages are the session history (assistant -> "model"; system messages are accepted and
ignored, the training template has no place for them), so the prompt is built by the same
`maeum.dialogue` code and history window as `maeum chat`, and the crisis screen reads its state
(a crisis shown earlier, a check-in being answered) from that history exactly as in a session.
A crisis or check-in turn gets the reviewed response and the model is not called.

One model generates one reply at a time (a single worker thread); up to `serve.queue_size`
requests wait, and any more get 503 at once. Every turn is an MLflow trace (`serve.trace`)
in the experiment `<tracking.experiment>-serve`: see `maeum.feedback` and docs/serving.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.resources
import logging
import re
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request  # module level: FastAPI resolves endpoint annotations from here

from maeum import adapters, chat, feedback, gemma, tracking
from maeum.config import ChatParams, Params, ParamsError
from maeum.dialogue import MODEL, USER
from maeum.safety import Assessment, ReplyCheck, Screen

log = logging.getLogger(__name__)

# === Limits of a request (one place; the server refuses anything larger with a 4xx) ===
MAX_BODY_BYTES = 1 << 20  # 1 MiB: far above any conversation the page sends
MAX_MESSAGES = 256  # the screen reads the whole conversation, so the page sends all of it
MAX_CONTENT_CHARS = 8000  # one message
MAX_NOTE_CHARS = 2000
MAX_ID_CHARS = 128  # session ids, reviewer names
TEMPERATURE_RANGE = (0.0, 2.0)  # OpenAI's; 0 means greedy
COMPILED_DECODINGS = 4  # each distinct decoding compiles its own generate function (seconds): keep a few
SESSION_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
TRACE_ID = re.compile(r"^tr-[0-9a-f]{32}$")
ROLES_IGNORED = ("system", "developer")  # accepted, not part of the training template
ROLE_IN_HISTORY = {"user": USER, "assistant": MODEL}
PAGE = ("web", "chat.html")  # package data under maeum/
WARM_UP_TEXT = "안녕하세요"  # one generation before listening, so the first request does not pay the compile
ERROR_RETRY_AFTER_S = "1"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class BadRequest(ValueError):
    """A request the server refuses with 400; the message says what to change."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class QueueFull(RuntimeError):
    """The model is generating and `serve.queue_size` requests already wait."""


# === Requests ===


@dataclass(frozen=True)
class ChatRequest:
    """One validated chat-completions request.

    Attributes:
        text: the last user message (what the model answers).
        history: the earlier user/assistant turns as session history, roles "user"/"model".
        messages: the messages as sent (system ones included), for the trace.
        max_tokens: new-token limit, within `serve.max_tokens`.
        temperature, top_p, seed: decoding; None: `chat:` defaults of params.yaml.
        session_id: groups the turns of one conversation in MLflow (None: a new one per request).
    """

    text: str
    history: tuple[tuple[str, str], ...]
    messages: tuple[dict[str, str], ...]
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    session_id: str | None = None


def _content_text(content: Any, where: str) -> str:
    """A message's text: a string, or OpenAI's list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        text = content
    elif isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                           for p in content):  # fmt: skip
        text = "".join(part["text"] for part in content)
    else:
        raise BadRequest(f"{where}.content must be a string or a list of text parts", where)
    if len(text) > MAX_CONTENT_CHARS:
        raise BadRequest(f"{where}.content is longer than {MAX_CONTENT_CHARS} characters", where)
    return text


def _number(body: dict, key: str, kind: type, low: float, high: float, above_low: bool = False) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise BadRequest(f"{key} must be {'a number' if kind is float else 'an integer'}, got {value!r}", key)
    if not low <= value <= high or (above_low and value == low):
        interval = f"in ({low}, {high}]" if above_low else f"between {low} and {high}"
        raise BadRequest(f"{key} must be {interval}, got {value}", key)
    return kind(value)


def parse_chat_request(body: Any, max_tokens_cap: int, default_max_tokens: int) -> ChatRequest:
    """Checks a chat-completions body and turns it into a `ChatRequest`.

    Args:
        body: the decoded JSON.
        max_tokens_cap: `serve.max_tokens`; a larger `max_tokens` is refused.
        default_max_tokens: used when the request gives none.

    Raises:
        BadRequest: anything the server cannot answer as asked, with the field named.
    """
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    if body.get("stream"):
        raise BadRequest("streaming is not supported: send stream=false", "stream")
    if body.get("n", 1) != 1:
        raise BadRequest("only n=1 is supported", "n")
    if "model" in body and not isinstance(body["model"], str):
        raise BadRequest("model must be a string", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list of {role, content} objects", "messages")
    if len(messages) > MAX_MESSAGES:
        raise BadRequest(f"at most {MAX_MESSAGES} messages per request", "messages")
    turns: list[tuple[str, str]] = []
    recorded = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"{where} must be an object with a string role", where)
        role = message["role"]
        if role not in (*ROLE_IN_HISTORY, *ROLES_IGNORED):
            raise BadRequest(f"{where}.role must be one of user, assistant, system; got {role!r}", where)
        text = _content_text(message.get("content"), where)
        recorded.append({"role": role, "content": text})
        if role in ROLE_IN_HISTORY:
            if role == "user" and not text.strip():
                raise BadRequest(f"{where}: a user message is empty", where)
            turns.append((ROLE_IN_HISTORY[role], text))
    if not turns or turns[-1][0] != USER:
        raise BadRequest("the last user or assistant message must be the user's: there is nothing to answer", "messages")
    limit = body["max_completion_tokens"] if body.get("max_completion_tokens") is not None else body.get("max_tokens")
    max_tokens = _number({"max_tokens": limit}, "max_tokens", int, 1, max_tokens_cap)
    session_id = body.get("session_id")
    if session_id is not None and (not isinstance(session_id, str) or not SESSION_ID.match(session_id)):
        raise BadRequest(f"session_id must be 1-{MAX_ID_CHARS} letters, digits or ._:-", "session_id")
    return ChatRequest(
        text=turns[-1][1],
        history=tuple(turns[:-1]),
        messages=tuple(recorded),
        max_tokens=max_tokens if max_tokens is not None else min(default_max_tokens, max_tokens_cap),
        temperature=_number(body, "temperature", float, *TEMPERATURE_RANGE),
        top_p=_number(body, "top_p", float, 0.0, 1.0, above_low=True),
        seed=_number(body, "seed", int, 0, 2**31 - 1),
        session_id=session_id,
    )


@dataclass(frozen=True)
class Rating:
    trace_id: str
    helpful: bool | None
    empathy: int | None
    note: str | None
    reviewer: str | None


def parse_rating(body: Any) -> Rating:
    """Checks a `POST /v1/feedback` body: trace_id, and helpful and/or empathy (1-5), optional note and reviewer.

    Raises:
        BadRequest: a field is missing, of the wrong type or out of range.
    """
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    trace_id = body.get("trace_id")
    if not isinstance(trace_id, str) or not TRACE_ID.match(trace_id):
        raise BadRequest("trace_id must be the trace id returned with the reply (tr-<32 hex>)", "trace_id")
    helpful = body.get("helpful")
    if helpful is not None and not isinstance(helpful, bool):
        raise BadRequest("helpful must be true or false", "helpful")
    empathy = _number(body, "empathy", int, *feedback.EMPATHY_RANGE)
    if helpful is None and empathy is None:
        raise BadRequest("give helpful and/or empathy", "helpful")
    note, reviewer = body.get("note"), body.get("reviewer")
    for key, value, limit in (("note", note, MAX_NOTE_CHARS), ("reviewer", reviewer, MAX_ID_CHARS)):
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            raise BadRequest(f"{key} must be a string of at most {limit} characters", key)
    return Rating(trace_id, helpful, empathy, (note or "").strip() or None, (reviewer or "").strip() or None)


# === Decoding ===


@dataclass(frozen=True)
class Decoding:
    sampler: str
    temperature: float
    top_k: int
    top_p: float


def decoding_for(temperature: float | None, top_p: float | None, defaults: ChatParams) -> Decoding:
    """The sampler for a request: `chat:` defaults when it sets neither temperature nor top_p;
    temperature 0 is greedy; otherwise nucleus (top_p < 1) or plain sampling at the temperature."""
    if temperature is None and top_p is None:
        return Decoding(defaults.sampler, defaults.temperature, defaults.top_k, defaults.top_p)
    temperature = defaults.temperature if temperature is None else temperature
    if temperature == 0:
        return Decoding("greedy", 0.0, defaults.top_k, 1.0)
    top_p = 1.0 if top_p is None else top_p
    return Decoding("top_p" if top_p < 1 else "random", temperature, defaults.top_k, top_p)


# === The served model ===


@dataclass(frozen=True)
class ServedModel:
    """What answers, in the words the API, the page and the traces use.

    Attributes:
        reference: what `load_chat_model` loads (an alias resolved to its version number, so the
            version named below is the one loaded even if the alias moves meanwhile).
        id: shown by /v1/models and the page: "maeum-lora@champion (v3)", or the adapter reference.
        version: the traces' `maeum.model_version` tag: "maeum-lora/3", or the adapter reference.
        logged_model_id: the registered version's MLflow logged model, linked from each trace.
    """

    reference: str
    id: str
    version: str
    logged_model_id: str | None = None


def resolve_served_model(reference: str) -> ServedModel:
    """Names the model a reference points at; a `models:/` reference is looked up in the registry.

    Raises:
        adapters.AdapterError: the registered model, alias or version does not exist.
    """
    if not reference.startswith(adapters.MODELS_PREFIX):
        return ServedModel(reference, reference, reference)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, alias, number = reference[len(adapters.MODELS_PREFIX) :].strip("/"), None, None
    if "@" in name:
        name, alias = name.split("@", 1)
    elif "/" in name:
        name, number = name.rsplit("/", 1)
    else:
        raise adapters.AdapterError(f"{reference}: expected models:/<name>@<alias> or models:/<name>/<version>")
    if alias is not None and not adapters.registry_has(name, alias):  # checked first: never creates a store
        raise adapters.AdapterError(f"{reference} is not in the model registry at {tracking.tracking_uri()}: register "
                                    "and promote a model first, or serve one with --adapter")  # fmt: skip
    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    try:
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, number)
    except MlflowException as error:
        raise adapters.AdapterError(f"{reference}: not in the model registry at {tracking.tracking_uri()} "
                                    f"({error.message})") from None  # fmt: skip
    version = str(found.version)
    shown = f"{name}@{alias} (v{version})" if alias is not None else f"{name} (v{version})"
    return ServedModel(f"{adapters.MODELS_PREFIX}{name}/{version}", shown, f"{name}/{version}",
                       getattr(found, "model_id", None))  # fmt: skip


# === One turn, traced ===


def assessment_record(assessment: Assessment) -> dict[str, Any]:
    return {"level": assessment.level, "score": round(assessment.score, 4), "about": assessment.about,
            "reason": assessment.reason, "category": assessment.category,
            "screened_session": assessment.screened_session,
            "signals": [signal.describe() for signal in assessment.signals]}  # fmt: skip


def reply_check_record(check: ReplyCheck) -> dict[str, Any]:
    return {"harmful": check.harmful, "score": round(check.score, 4), "reason": check.reason, "rule_id": check.rule_id}


class _TracedScreen:
    """The session's screen, with each decision recorded as a span (levels and texts unchanged)."""

    def __init__(self, screen: Screen):
        self._screen = screen

    def __getattr__(self, name: str) -> Any:
        return getattr(self._screen, name)

    def assess(self, text: str, history: Sequence[tuple[str, str]] = ()) -> Assessment:
        import mlflow
        from mlflow.entities import SpanType

        with mlflow.start_span("safety.assess", span_type=SpanType.GUARDRAIL) as span:
            span.set_inputs({"text": text, "history_turns": len(history)})
            assessment = self._screen.assess(text, history)
            span.set_outputs(assessment_record(assessment))
        return assessment

    def shown_reply(self, reply: str, history: Sequence[tuple[str, str]], assessment: Assessment | None = None
                    ) -> tuple[str, ReplyCheck]:  # fmt: skip
        import mlflow
        from mlflow.entities import SpanType

        with mlflow.start_span("safety.reply", span_type=SpanType.GUARDRAIL) as span:
            span.set_inputs({"reply": reply})
            shown, check = self._screen.shown_reply(reply, history, assessment)
            span.set_outputs({**reply_check_record(check), "shown": shown})
        return shown, check


class _RequestGenerator:
    """The shared generator, limited to one request's max_tokens, with the generation as a span."""

    def __init__(self, generator: gemma.ReplyGenerator, max_tokens: int):
        self.generator = generator
        self.max_tokens = max_tokens
        self.generated: list[int] = []

    def generate_ids(self, prompts: Sequence[Sequence[int]]) -> list[list[int]]:
        import mlflow
        from mlflow.entities import SpanType

        with mlflow.start_span("generate", span_type=SpanType.LLM) as span:
            # The prompt as the model reads it: after the history window and truncation.
            span.set_inputs({"prompt": gemma.decode(self.generator.base.tokenizer, prompts[0]),
                             "prompt_tokens": len(prompts[0]), "max_tokens": self.max_tokens})  # fmt: skip
            replies = [ids[: self.max_tokens] for ids in self.generator.generate_ids(prompts)]
            self.generated = replies[0]
            span.set_outputs({"text": self.detokenize(replies[0]), "tokens": len(replies[0])})
        return replies

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.generator.detokenize(ids)


@dataclass(frozen=True)
class Answer:
    """A served turn: the session's `ChatTurn` and what the API reports with it."""

    turn: chat.ChatTurn
    completion_tokens: int
    finish_reason: str
    trace_id: str | None
    session_id: str


class ChatServer:
    """The loaded model, the screen and the generator; answers one request at a time (not thread-safe:
    `GenerationQueue` calls it from its single worker)."""

    def __init__(self, params: Params, chat_model: chat.ChatModel, served: ServedModel, screen: Screen, trace: bool):
        self.params = params
        self.chat_model = chat_model
        self.served = served
        self.trace = trace
        default = decoding_for(None, None, params.chat)
        self.session = chat.open_session(params, chat_model, params.serve.max_tokens, self._sampler(default), screen)
        self._decoding = default
        self._compiled: OrderedDict[Decoding, tuple[Any, Any]] = OrderedDict()

    @staticmethod
    def _sampler(decoding: Decoding) -> Any:
        return chat.make_sampler(decoding.sampler, decoding.temperature, decoding.top_k, decoding.top_p, None)

    def _use(self, decoding: Decoding, seed: int | None) -> None:
        """Puts the decoding's sampler and its compiled generate function (kept per decoding) on the model."""
        causal_lm = self.session.generator.base.causal_lm
        if decoding != self._decoding:
            self._compiled[self._decoding] = (causal_lm.sampler, causal_lm.generate_function)
            sampler, function = self._compiled.pop(decoding, (self._sampler(decoding), None))
            causal_lm.sampler, causal_lm.generate_function = sampler, function
            self._decoding = decoding
            while len(self._compiled) > COMPILED_DECODINGS:
                self._compiled.popitem(last=False)
        if seed is not None:
            for state in causal_lm.sampler.variables:  # seed generators' states: reset, no recompiling
                state.assign([seed, 0])

    def warm_up(self) -> float:
        """Compiles the default decoding with one untraced generation; returns its seconds."""
        started = time.perf_counter()
        _, fitted = self.session.prompt_for(WARM_UP_TEXT)
        self.session.generator.generate_ids([fitted.prompt])
        return time.perf_counter() - started

    def answer(self, request: ChatRequest) -> Answer:
        """One turn: screen, prompt, generation (unless screened), reply screen; traced when tracing is on."""
        import mlflow
        from mlflow.entities import SpanType

        session_id = request.session_id or uuid.uuid4().hex
        self._use(decoding_for(request.temperature, request.top_p, self.params.chat), request.seed)
        generator = _RequestGenerator(self.session.generator, request.max_tokens)
        session = dataclasses.replace(self.session, generator=generator, screen=_TracedScreen(self.session.screen),
                                      history=list(request.history))  # fmt: skip
        with mlflow.start_span("chat_turn", span_type=SpanType.CHAT_MODEL) as root:
            root.set_inputs({"messages": list(request.messages), "max_tokens": request.max_tokens,
                             "temperature": request.temperature, "top_p": request.top_p, "seed": request.seed})  # fmt: skip
            turn = session.respond(request.text)
            completion = len(generator.generated) if not turn.screened else 0
            finish = "length" if completion >= request.max_tokens else "stop"
            root.set_attributes({
                "maeum.model": self.served.id, "maeum.model_version": self.served.version,
                "maeum.safety": assessment_record(turn.assessment), "maeum.prompt": turn.prompt.text,
                "maeum.screened": turn.screened, "maeum.replaced": turn.replaced,
                "maeum.latency_s": round(turn.seconds, 4), "maeum.completion_tokens": completion,
                "maeum.finish_reason": finish,
            })  # fmt: skip
            root.set_outputs(turn.reply)  # the plain text: MLflow's trace list shows it as the response
            if self.trace:
                mlflow.update_current_trace(
                    tags={feedback.TAG_MODEL_VERSION: self.served.version, "maeum.model": self.served.id,
                          "maeum.safety_level": turn.assessment.level},
                    session_id=session_id, request_preview=request.text, response_preview=turn.reply,
                    model_id=self.served.logged_model_id,
                )  # fmt: skip
            trace_id = root.trace_id if self.trace else None
        log.info("turn (%s) answered in %.2f s", turn.assessment.level, turn.seconds)
        return Answer(turn, completion, finish, trace_id, session_id)


# === The queue: one generation at a time ===


class GenerationQueue:
    """Runs one job at a time on a single worker thread; at most `queue_size` wait, more are refused.

    Counters live on the event loop's thread only, so they need no lock.
    """

    def __init__(self, queue_size: int):
        self.queue_size = queue_size
        self.admitted = 0  # running + waiting
        self.running = False
        self._turn = asyncio.Lock()  # FIFO: waiters are served in arrival order
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maeum-generate")

    @property
    def waiting(self) -> int:
        return self.admitted - int(self.running)

    async def run(self, job: Callable[..., Any], *args: Any) -> Any:
        """Runs `job(*args)` on the worker when its turn comes.

        Raises:
            QueueFull: one job runs and `queue_size` already wait.
        """
        if self.admitted >= 1 + self.queue_size:
            raise QueueFull(f"the model is busy: 1 reply generating and {self.waiting} waiting "
                            f"(serve.queue_size {self.queue_size}); try again shortly")  # fmt: skip
        self.admitted += 1
        try:
            async with self._turn:
                self.running = True
                try:
                    # The single worker also keeps two jobs off the model if a caller is cancelled mid-job.
                    return await asyncio.get_running_loop().run_in_executor(self._worker, job, *args)
                finally:
                    self.running = False
        finally:
            self.admitted -= 1

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)


# === The HTTP app ===


def page_html() -> str:
    """The web chat page shipped in the package (inline CSS and JS: it loads nothing from the network)."""
    return importlib.resources.files("maeum").joinpath(*PAGE).read_text(encoding="utf-8")


def _error(status: int, message: str, kind: str, param: str | None = None, code: str | None = None,
           headers: dict[str, str] | None = None) -> Any:  # fmt: skip
    from fastapi.responses import JSONResponse

    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _json_body(request: Request) -> Any:
    import json

    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise BadRequest(f"the body must be at most {MAX_BODY_BYTES} bytes")
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest(f"the body must be at most {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON") from None


def completion_body(answer: Answer, model_id: str) -> dict[str, Any]:
    """The OpenAI `chat.completion` object for a served turn, with maeum's own fields under `maeum`."""
    turn = answer.turn
    prompt_tokens = len(turn.fitted.prompt) if turn.fitted is not None else 0
    return {
        "id": f"chatcmpl-{answer.trace_id or uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": turn.reply},
                     "finish_reason": answer.finish_reason, "logprobs": None}],  # fmt: skip
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": answer.completion_tokens,
                  "total_tokens": prompt_tokens + answer.completion_tokens},  # fmt: skip
        "maeum": {"trace_id": answer.trace_id, "session_id": answer.session_id, "screened": turn.screened,
                  "replaced": turn.replaced, "safety_level": turn.assessment.level, "about": turn.assessment.about,
                  "latency_s": round(turn.seconds, 4)},  # fmt: skip
    }


def create_app(server: ChatServer, queue: GenerationQueue, experiment_id: str | None) -> Any:
    """The FastAPI app over a loaded `ChatServer`.

    Args:
        experiment_id: the serve experiment (ratings are accepted only for its traces); None when tracing is off.
    """
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse
    from starlette.concurrency import run_in_threadpool

    # No /docs or /openapi.json: their pages load assets from a CDN, and nothing here needs them.
    app = FastAPI(title="maeum", docs_url=None, redoc_url=None, openapi_url=None)
    params = server.params
    page = page_html()
    model_object = {"id": server.served.id, "object": "model", "created": 0, "owned_by": "maeum",
                    "version": server.served.version, "description": server.chat_model.description}  # fmt: skip

    @app.get("/", response_class=HTMLResponse)
    async def index() -> Any:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": server.served.id, "version": server.served.version, "trace": server.trace,
                "generating": queue.running, "waiting": queue.waiting, "queue_size": queue.queue_size}  # fmt: skip

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_object], "trace": server.trace}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        try:
            parsed = parse_chat_request(await _json_body(request), params.serve.max_tokens, params.chat.max_new_tokens)
            answer = await queue.run(server.answer, parsed)
        except BadRequest as error:
            return _error(400, str(error), "invalid_request_error", error.param)
        except QueueFull as error:
            return _error(503, str(error), "server_busy", code="queue_full", headers={"Retry-After": ERROR_RETRY_AFTER_S})
        return completion_body(answer, server.served.id)

    @app.post("/v1/feedback")
    async def rate(request: Request) -> Any:
        if experiment_id is None:
            return _error(409, "tracing is off (serve.trace: false), so there is no trace to rate", "invalid_request_error")
        try:
            rating = parse_rating(await _json_body(request))
        except BadRequest as error:
            return _error(400, str(error), "invalid_request_error", error.param)
        if not await run_in_threadpool(_served_trace, rating.trace_id, experiment_id):
            return _error(404, f"no served turn with trace_id {rating.trace_id}", "not_found_error", "trace_id")
        written = await run_in_threadpool(feedback.log_rating, rating.trace_id, rating.helpful, rating.empathy,
                                          rating.note, rating.reviewer)  # fmt: skip
        return {"trace_id": rating.trace_id, "logged": written}

    return app


def _served_trace(trace_id: str, experiment_id: str) -> bool:
    """Whether `trace_id` is a turn of this server's experiment (waiting for traces still being written)."""
    import mlflow

    with contextlib.suppress(Exception):
        trace = mlflow.get_trace(trace_id, silent=True) or mlflow.get_trace(trace_id, silent=True, flush=True)
        return trace is not None and trace.info.experiment_id == experiment_id
    return False


# === Entry ===


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on host:port, taken before the model loads so a busy port fails at once.

    Raises:
        OSError: the address cannot be bound (in use, not an address of this machine).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def check_serve_params(params: Params) -> None:
    """Refuses `serve:` values the server cannot run with.

    Raises:
        ParamsError: a negative queue or a max_tokens below 1.
    """
    if params.serve.queue_size < 0:
        raise ParamsError(f"{params.source}: serve.queue_size must be 0 or more, got {params.serve.queue_size}")
    if params.serve.max_tokens < 1:
        raise ParamsError(f"{params.source}: serve.max_tokens must be at least 1, got {params.serve.max_tokens}")


def default_reference(params: Params) -> str:
    """What `maeum serve` serves without --adapter: `models:/<tracking.registered_model>@champion`."""
    return f"{adapters.MODELS_PREFIX}{params.tracking.registered_model}@{adapters.CHAMPION_ALIAS}"


def load_server(params: Params, served: ServedModel, preset: str | None, trace: bool) -> ChatServer:
    """Loads the model (`maeum.chat.load_chat_model`, as `maeum chat`) and the screen, and warms up.

    Raises:
        adapters.AdapterError, gemma.WeightsUnavailable, SafetyConfigError: with a message saying what to do.
    """
    # The screen is loaded before the weights; a registered version brings the one it was evaluated and promoted with.
    chat_model = chat.load_chat_model(params, preset=preset, adapter=served.reference)
    server = ChatServer(params, chat_model, served, chat_model.screen, trace)
    log.info("warm-up generation: %.1f s", server.warm_up())
    return server


def serve(params: Params, sock: socket.socket, reference: str, preset: str | None, trace: bool) -> None:
    """Loads the model and serves until interrupted.

    Args:
        params: the project parameters (`serve:`, `chat:`, `tracking:` ...).
        sock: from `bind`; the server listens on it once the model is loaded.
        reference: the model (`default_reference(params)` or an adapter reference as `maeum chat --adapter`).
        preset: the base (None: the model stage's), as `maeum chat --preset`.
        trace: record every turn in MLflow.
    """
    import mlflow
    import uvicorn

    check_serve_params(params)
    served = resolve_served_model(reference)  # first: a missing champion is reported before any store is created
    experiment_id = None
    if trace:
        experiment_id = tracking.setup(feedback.serve_experiment(params.tracking))
        mlflow.tracing.enable()
    else:
        mlflow.tracing.disable()
    server = load_server(params, served, preset, trace)
    queue = GenerationQueue(params.serve.queue_size)
    host, port = sock.getsockname()[:2]
    where = f"traces -> {tracking.tracking_uri()} experiment {feedback.serve_experiment(params.tracking)}" if trace else "tracing off"
    log.warning("maeum serve: %s on http://%s:%s (%s)", server.served.id, host, port, where)
    if host not in LOOPBACK:
        log.warning("listening beyond this machine without authentication; every turn typed here is traced")
    try:
        uvicorn.Server(uvicorn.Config(create_app(server, queue, experiment_id), log_level="warning")).run(sockets=[sock])
    finally:
        queue.close()
