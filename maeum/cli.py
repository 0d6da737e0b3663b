"""The `maeum` console script: chat with the fine-tuned model, fetch weights.

    maeum chat                                   interactive; /reset starts over, /quit ends
    maeum chat --message "요즘 너무 지쳐"          one turn (repeat --message for more), then exit
    maeum chat --adapter models:/maeum-lora@champion --sampler top_p --temperature 0.8
    maeum download base --preset gemma2_instruct_2b_en
    maeum download adapter gemma2-ko-dialogue-lora

Adapters: a *.lora.h5 or *.keras path, an MLflow run id or runs:/<id>, models:/<name>@<alias>,
kaggle:<name or handle>, or `none`. Without --adapter: the last local training
(train.out_dir/run.json), else models:/<tracking.registered_model>@champion, else the base alone.
Messages that signal a crisis are answered with the 109 / 1388 crisis response, never by the model.
"""

from __future__ import annotations

import argparse
import logging
import sys

from maeum.config import ParamsError, load_params
from maeum.runtime import prepare_process

log = logging.getLogger(__name__)

EXIT_UNAVAILABLE = 2  # weights, adapter or parameters cannot be had: the message says what to do

USER_PROMPT = "나> "
MODEL_PROMPT = "마음> "
QUIT_COMMANDS = ("/quit", "/exit")
RESET_COMMAND = "/reset"
HELP_COMMAND = "/help"
HELP_TEXT = "/reset: 대화를 처음부터 다시 시작 (history cleared) · /quit: 끝내기 (exit) · /help: 도움말"
EMPTY_REPLY = "…"  # shown when the model ends its turn at once, so the user sees that it answered


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maeum", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{chat,download}")

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


def _chat(args: argparse.Namespace) -> int:
    from maeum import chat

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


# === download ===


def _download_base(args: argparse.Namespace) -> int:
    import dataclasses

    from maeum import gemma

    params = load_params(args.params)
    preset = args.preset or params.model.preset
    if preset == "tiny":
        print("maeum: the tiny preset is built here by the model stage (`dvc repro model`), not downloaded; "
              f"pass --preset one of {sorted(params.model.kaggle_handles)}", file=sys.stderr)  # fmt: skip
        return EXIT_UNAVAILABLE
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
    from tasks.safety import SafetyRulesError

    try:
        if args.command == "chat":
            return _chat(args)
        return _download_base(args) if args.what == "base" else _download_adapter(args)
    except (AdapterError, WeightsUnavailable, ParamsError, SafetyRulesError) as error:
        print(f"maeum: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
