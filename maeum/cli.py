"""The `maeum` console script: chat with the fine-tuned model, review the crisis screen, fetch weights.

    maeum chat                                   interactive; /reset starts over, /quit ends
    maeum chat --message "요즘 너무 지쳐"          one turn (repeat --message for more), then exit
    maeum chat --adapter models:/maeum-lora@champion --sampler top_p --temperature 0.8
    maeum serve                                  models:/maeum-lora@champion on http://127.0.0.1:8000 (docs/serving.md)
    maeum serve --adapter models/lora --port 8001 --no-trace
    maeum registry history                       who held champion / challenger when, and why
    maeum registry promote 3                     make version 3 the champion (manual promotion mode)
    maeum registry rollback                      champion back to the version before
    maeum registry report                        reviewers' ratings per version (from served traces)
    maeum safety assess "요즘 아침에 눈 안 떴으면 좋겠어"   level, score and reasons
    maeum safety eval data/safety/heldout.tsv    recall and false positives per category
    maeum download base --preset gemma2_instruct_2b_en
    maeum download adapter gemma2-ko-dialogue-lora

Adapters: a *.lora.h5 or *.keras path, an MLflow run id or runs:/<id>, models:/<name>@<alias>,
kaggle:<name or handle>, or `none`. Without --adapter: the last local training
(train.out_dir/run.json), else models:/<tracking.registered_model>@champion, else the base alone.
Messages that signal a crisis are answered with the reviewed crisis texts (109, 1577-0199, 1388,
112/119), never by the model. Every bad input gets one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from maeum.config import ParamsError, load_params
from maeum.runtime import prepare_process

log = logging.getLogger(__name__)


class UsageError(ValueError):
    """A bad value from the command line; printed as one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage itself is in --help)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")

EXIT_USAGE = 2  # bad input, or weights, adapter, parameters or safety files that cannot be had: the message says what to do

USER_PROMPT = "나> "
MODEL_PROMPT = "마음> "
QUIT_COMMANDS = ("/quit", "/exit")
RESET_COMMAND = "/reset"
HELP_COMMAND = "/help"
HELP_TEXT = "/reset: 대화를 처음부터 다시 시작 (history cleared) · /quit: 끝내기 (exit) · /help: 도움말"
EMPTY_REPLY = "…"  # shown when the model ends its turn at once, so the user sees that it answered


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="maeum", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{chat,serve,registry,safety,download}")

    chat = commands.add_parser("chat", help="talk to the model (interactive, or --message for one turn)")
    chat.add_argument("--params", default="params.yaml", help="parameters file (default: ./params.yaml)")
    chat.add_argument("--message", "-m", action="append", metavar="TEXT",
                      help="answer this message and exit; repeat for a multi-turn conversation")  # fmt: skip
    chat.add_argument("--adapter", help="adapter reference (see above); `none` for the base alone")
    chat.add_argument("--preset", help="base: a preset name from model.kaggle_handles or a preset folder "
                                       "(default: the base the model stage recorded in model.base_dir)")  # fmt: skip
    chat.add_argument("--lora-rank", type=int, help="require this LoRA rank (error if the adapter's differs)")
    # Decoding defaults live in params.yaml (chat:); a flag overrides them for this session.
    chat.add_argument("--max-length", type=int, metavar="N", help="most new tokens per reply (default: chat.max_new_tokens)")
    chat.add_argument("--sampler", choices=("greedy", "top_k", "top_p", "random"), help="decoding (default: chat.sampler)")
    chat.add_argument("--temperature", type=float, help="for top_k, top_p, random (default: chat.temperature)")
    chat.add_argument("--top-k", type=int, help="for top_k (default: chat.top_k)")
    chat.add_argument("--top-p", type=float, help="for top_p (default: chat.top_p)")
    chat.add_argument("--seed", type=int, help="sampling seed, for reproducible sampled replies")
    chat.add_argument("--show-prompt", action="store_true", help="print each prompt the model reads (stderr)")

    serve = commands.add_parser("serve", help="OpenAI-compatible endpoint + reviewers' web chat, traced in MLflow")
    serve.add_argument("--params", default="params.yaml", help="parameters file (default: ./params.yaml)")
    serve.add_argument("--adapter", help="adapter reference as for chat (default: models:/<tracking.registered_model>@champion)")
    serve.add_argument("--preset", help="base, as for chat (default: the base the model stage recorded)")
    serve.add_argument("--host", help="address to listen on (default: serve.host); traces hold what users type")
    serve.add_argument("--port", type=int, help="port (default: serve.port)")
    serve.add_argument("--trace", action=argparse.BooleanOptionalAction, default=None,
                       help="record every turn as an MLflow trace (default: serve.trace)")  # fmt: skip

    registry = commands.add_parser("registry", help="the model registry: promote, roll back, history, reviewers' report")
    registry_what = registry.add_subparsers(dest="what", required=True, metavar="{promote,rollback,history,report}")
    promote = registry_what.add_parser("promote", help="make a version the champion (records who and why)")
    promote.add_argument("version", help="the registered version number")
    promote.add_argument("--reason", default="promoted by hand", help="why, for the history")
    rollback = registry_what.add_parser("rollback", help="return champion to the version that held it before")
    history = registry_what.add_parser("history", help="every alias move: version, before, who, when, why")
    report = registry_what.add_parser("report", help="reviewers' ratings per version, from served traces")
    for sub in (promote, rollback, history, report):
        sub.add_argument("--params", default="params.yaml", help="parameters file (default: ./params.yaml)")
    for sub in (promote, rollback):
        sub.add_argument("--by", help="who decides (default: the login name)")

    safety = commands.add_parser("safety", help="review the crisis screen: one message, or a labelled TSV file")
    safety_what = safety.add_subparsers(dest="what", required=True, metavar="{assess,eval}")
    assess = safety_what.add_parser("assess", help="level, score and reasons for one message (with earlier turns)")
    assess.add_argument("text", help="the message")
    assess.add_argument("--before", action="append", default=[], metavar="TEXT",
                        help="an earlier user message of the same conversation (repeat, oldest first)")  # fmt: skip
    assess.add_argument("--params", default="params.yaml", help="parameters file (default: ./params.yaml)")
    evaluate = safety_what.add_parser("eval", help="recall and false positives per category on a TSV (label, category, text)")
    evaluate.add_argument("file", help="TSV with header label<TAB>category<TAB>text; label crisis or safe")
    evaluate.add_argument("--params", default="params.yaml", help="parameters file (default: ./params.yaml)")
    evaluate.add_argument("--show", action="store_true", help="also list the missed and the wrongly flagged messages")

    download = commands.add_parser("download", help="fetch weights from Kaggle into the kagglehub cache")
    what = download.add_subparsers(dest="what", required=True, metavar="{base,adapter}")
    base = what.add_parser("base", help="the base preset (model.kaggle_handles)")
    base.add_argument("--params", default="params.yaml", help="parameters file (default: ./params.yaml)")
    base.add_argument("--preset", help="preset name (default: model.preset in params)")
    adapter = what.add_parser("adapter", help="the original project's published adapter")
    from maeum.adapters import DEFAULT_KAGGLE_ADAPTER, KAGGLE_ADAPTERS

    adapter.add_argument("name", nargs="?", default=DEFAULT_KAGGLE_ADAPTER,
                         help=f"a known name ({', '.join(KAGGLE_ADAPTERS)}) or a versioned Kaggle handle "
                              f"(default {DEFAULT_KAGGLE_ADAPTER})")  # fmt: skip
    return parser


# === chat ===


def _check_chat_args(args: argparse.Namespace) -> None:
    """Refuses bad values before minutes are spent loading a model."""
    if args.message is not None and any(not message.strip() for message in args.message):
        raise UsageError("--message is empty: give the text to answer")
    for flag, value, ok, rule in (("--max-length", args.max_length, lambda v: v >= 1, "at least 1"),
                                  ("--temperature", args.temperature, lambda v: v > 0, "above 0"),
                                  ("--top-k", args.top_k, lambda v: v >= 1, "at least 1"),
                                  ("--top-p", args.top_p, lambda v: 0 < v <= 1, "in (0, 1]"),
                                  ("--lora-rank", args.lora_rank, lambda v: v >= 1, "at least 1")):  # fmt: skip
        if value is not None and not ok(value):
            raise UsageError(f"{flag} must be {rule}, got {value}")


def _chat(args: argparse.Namespace) -> int:
    from maeum import chat

    _check_chat_args(args)
    params = load_params(args.params)
    prepare_process(logging.WARNING, backend=params.train.backend)  # before keras is first imported
    chat_model = chat.load_chat_model(params, preset=args.preset, adapter=args.adapter, lora_rank=args.lora_rank)
    print(f"maeum chat: {chat_model.description}", file=sys.stderr)
    decoding = {name: getattr(params.chat, name) if getattr(args, flag) is None else getattr(args, flag)
                for name, flag in (("sampler", "sampler"), ("temperature", "temperature"), ("top_k", "top_k"),
                                   ("top_p", "top_p"), ("max_new_tokens", "max_length"))}  # fmt: skip
    sampler = chat.make_sampler(decoding["sampler"], decoding["temperature"], decoding["top_k"], decoding["top_p"], args.seed)
    session = chat.open_session(params, chat_model, decoding["max_new_tokens"], sampler)
    if args.message:
        transcript = len(args.message) > 1
        for message in args.message:
            turn = _answer(session, message, args.show_prompt)
            shown = turn.reply or EMPTY_REPLY
            print(f"{USER_PROMPT}{turn.user_text}\n{MODEL_PROMPT}{shown}" if transcript else shown, flush=True)
        return 0
    print(HELP_TEXT, file=sys.stderr)
    while True:
        try:
            line = input(USER_PROMPT)
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        text = line.strip()
        if not text:
            continue
        if text in QUIT_COMMANDS:
            return 0
        if text == RESET_COMMAND:
            session.reset()
            print("(새 대화를 시작합니다)", file=sys.stderr)
            continue
        if text.startswith("/"):
            print(HELP_TEXT, file=sys.stderr)
            continue
        turn = _answer(session, text, args.show_prompt)
        print(f"{MODEL_PROMPT}{turn.reply or EMPTY_REPLY}", flush=True)


def _answer(session, message: str, show_prompt: bool):
    if show_prompt:
        print(f"--- prompt ---\n{session.prompt_for(message)[0].text}--- end ---", file=sys.stderr)
    turn = session.respond(message)
    log.info("turn answered in %.2f s", turn.seconds)
    return turn


# === serve ===


def _serve(args: argparse.Namespace) -> int:
    from maeum import serve

    if args.port is not None and not 1 <= args.port <= 65535:
        raise UsageError(f"--port must be 1-65535, got {args.port}")
    params = load_params(args.params)
    prepare_process(logging.WARNING, backend=params.train.backend)  # before keras is first imported
    logging.getLogger("maeum").setLevel(logging.INFO)  # the server's own lines: model, warm-up, each turn
    host, port = args.host or params.serve.host, params.serve.port if args.port is None else args.port
    try:
        sock = serve.bind(host, port)
    except OSError as error:
        raise UsageError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    reference = args.adapter or serve.default_reference(params)
    trace = params.serve.trace if args.trace is None else args.trace
    with sock:
        serve.serve(params, sock, reference, args.preset, trace)
    return 0


# === registry ===


def _registry(args: argparse.Namespace) -> int:
    from maeum import registry

    params = load_params(args.params)
    name = params.tracking.registered_model
    try:
        if args.what == "promote":
            event = registry.promote_version(name, args.version, by=args.by, reason=args.reason)
            print(f"{name}@champion: v{event['previous']} -> v{event['version']} ({event['by']}, {event['at']})")
            return 0
        if args.what == "rollback":
            event = registry.rollback(name, by=args.by)
            print(f"{name}@champion rolled back: v{event['previous']} -> v{event['version']} ({event['by']}, {event['at']})")
            return 0
    except registry.RegistryError as error:
        raise UsageError(str(error)) from None
    if args.what == "history":
        events = registry.alias_history(name)
        if not events:
            print(f"{name}: no alias moves recorded in {registry.tracking.tracking_uri()}")
        for event in events:
            print(f"{event['at']}  {event['alias']:<10} v{event['previous'] or '-':<4} -> v{event['version']:<4} "
                  f"{event['action']:<9} {event['by']}: {event['reason']}")  # fmt: skip
    else:
        from maeum.feedback import feedback_by_version, serve_experiment

        summary = feedback_by_version(serve_experiment(params.tracking))
        if not summary:
            print(f"no rated turns yet in experiment {serve_experiment(params.tracking)} ({registry.tracking.tracking_uri()})")
        print(f"{'model version':<24} {'turns':>6} {'rated':>6} {'helpful':>8} {'empathy':>8}")
        for version, item in sorted(summary.items()):
            helpful = "-" if item.helpful_rate is None else f"{item.helpful_rate:.0%}"
            empathy = "-" if item.mean_empathy is None else f"{item.mean_empathy:.2f}"
            print(f"{version:<24} {item.turns:>6} {item.rated:>6} {helpful:>8} {empathy:>8}")
            if item.rated and version.startswith(f"{name}/"):  # a registered version: its card shows the ratings
                registry.add_reviewers_to_card(name, version.split("/", 1)[1], item)
    return 0


# === safety ===


def _safety(args: argparse.Namespace) -> int:
    from maeum.safety import Screen, evaluation

    if args.what == "assess" and not args.text.strip():
        raise UsageError("the message is empty")
    screen = Screen.load(load_params(args.params).safety)
    if args.what == "assess":
        history = [("user", text) for text in args.before]
        assessment = screen.assess(args.text, history)
        print(f"level: {assessment.level}\nscore: {assessment.score:.3f}\nabout: {assessment.about}\n"
              f"category: {assessment.category or '-'}\nreason: {assessment.reason}")  # fmt: skip
        print("signals:\n" + "\n".join(f"  {signal.describe()}" for signal in assessment.signals))
        if assessment.needs_response:
            print(f"response:\n{screen.responses.for_assessment(assessment)}")
        return 0
    examples = evaluation.read_examples(Path(args.file))
    scores = evaluation.score_levels(examples, [screen.assess(example.text).level for example in examples])
    print(evaluation.format_table(scores))
    if args.show:
        for key, label in (("missed", "missed"), ("false_crisis", "safe as crisis"), ("false_check_in", "safe as check_in")):
            for item in scores[key]:
                print(f"{label}\t{item['category']}\t{item['text']}")
    return 0


# === download ===


def _download_base(args: argparse.Namespace) -> int:
    import dataclasses

    from maeum import gemma

    params = load_params(args.params)
    preset = args.preset or params.model.preset
    if preset == "tiny":
        print("maeum: the tiny preset is built here by the model stage (`dvc repro model`), not downloaded; "
              f"pass --preset one of {sorted(params.model.kaggle_handles)}", file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    folder = gemma.resolve_base(dataclasses.replace(params.model, preset=preset))
    print(f"maeum: base {preset} is in {folder}; train on it with `dvc exp run -S model.preset={preset}` "
          f"or chat with `maeum chat --preset {preset}`", file=sys.stderr)  # fmt: skip
    print(folder)
    return 0


def _download_adapter(args: argparse.Namespace) -> int:
    from maeum import adapters

    folder = adapters.download_kaggle_adapter(args.name)
    adapter = adapters.adapter_in_folder(folder, f"{adapters.KAGGLE_PREFIX}{args.name}")
    print(f"maeum: {adapter.describe()}; chat with it: "
          f"`maeum chat --adapter {adapters.KAGGLE_PREFIX}{args.name} --preset gemma2_instruct_2b_en`", file=sys.stderr)  # fmt: skip
    print(adapter.path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `maeum` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    prepare_process(level=logging.WARNING)  # the terminal is for the conversation; warnings still show
    from maeum.adapters import AdapterError
    from maeum.gemma import WeightsUnavailable
    from maeum.safety import SafetyConfigError

    try:
        if args.command == "chat":
            return _chat(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "safety":
            return _safety(args)
        if args.command == "registry":
            return _registry(args)
        return _download_base(args) if args.what == "base" else _download_adapter(args)
    except (AdapterError, WeightsUnavailable, ParamsError, SafetyConfigError, UsageError) as error:
        print(f"maeum: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
