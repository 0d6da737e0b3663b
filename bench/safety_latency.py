"""What the crisis screen adds to one chat turn: `Screen.assess` of the user's message with its history,
plus `Screen.screen_reply` of the model's reply, exactly what `maeum chat` and `maeum serve` run.

    python bench/safety_latency.py            # needs the safety stage's output (`dvc repro safety`)
    python bench/safety_latency.py --turns 200

Conversations are the configured validation dialogues (the sample corpus by default), replayed turn by turn with their
reference replies as the model's turns, so the context grows as in a real chat. The first turn
after loading is reported apart (the morphological analyser's first call). Views are cached per
text inside a screen, so every turn is timed on a fresh text: a repeated corpus sentence would
otherwise measure the cache.

The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def conversations(params) -> list[list[tuple[str, str]]]:
    """(user, reply) turns of each validation dialogue of the configured corpus, in order."""
    from maeum.corpus import dialogues_frame, read_corpus_file
    from maeum.safety.evaluation import dialogue_turns
    from tasks.preprocess import build_examples

    corpus = read_corpus_file(REPO / params.data.validation_path)
    return dialogue_turns(build_examples(dialogues_frame(corpus, "bench"), params.preprocess.max_history_turns))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=300, help="timed turns (after the first)")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from maeum.config import load_params
    from maeum.runtime import prepare_process
    from maeum.safety.screen import Screen

    prepare_process()
    params = load_params(args.params)
    started = time.perf_counter()
    screen = Screen.load(params.safety)
    load_seconds = time.perf_counter() - started

    per_turn: list[float] = []
    first_turn_ms = None
    for dialogue in conversations(params) * 100:  # replayed until enough turns; each turn gets a fresh text below
        history: list[tuple[str, str]] = []
        for user, reply in dialogue:
            user = f"{user} ({len(per_turn)})"  # fresh text: no cached views
            started = time.perf_counter()
            screen.assess(user, history)
            screen.screen_reply(f"{reply} ({len(per_turn)})")
            elapsed_ms = (time.perf_counter() - started) * 1000
            if first_turn_ms is None:
                first_turn_ms = elapsed_ms
            else:
                per_turn.append(elapsed_ms)
            history += [("user", user), ("model", reply)]
            if len(per_turn) >= args.turns:
                break
        if len(per_turn) >= args.turns:
            break

    per_turn.sort()
    result = {
        "turns": len(per_turn),
        "median_ms": round(statistics.median(per_turn), 2),
        "p95_ms": round(per_turn[int(0.95 * (len(per_turn) - 1))], 2),
        "max_ms": round(per_turn[-1], 2),
        "first_turn_ms": round(first_turn_ms or 0.0, 2),
        "load_seconds": round(load_seconds, 2),
        "context_turns": params.safety.context_turns,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    print(f"screening per chat turn: median {result['median_ms']} ms, p95 {result['p95_ms']} ms, max {result['max_ms']} ms "
          f"over {result['turns']} turns (first turn {result['first_turn_ms']} ms, loading {result['load_seconds']} s)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
