"""tokenize stage: token ids and a response-only loss mask per example (`maeum.tokenized`).

Each example becomes `<bos> prompt response` with at most `train.sequence_length + 1` ids; too-long
examples lose their oldest history turns first, and every truncation is counted and reported in
`tokenize.stats_file`. The loss weights cover the response only (`train.loss_on: response`) or
every id (`all`).

    python -m tasks.tokenize [--params params.yaml]
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import pandas as pd

from maeum import atomic, gemma
from maeum.config import SPLITS, Params
from maeum.runtime import stage_params
from maeum.tokenized import tokenize_examples

log = logging.getLogger(__name__)


def run(params: Params) -> dict[str, dict[str, Any]]:
    """The stage: tokenized splits into `tokenize.out_dir` (as a whole), statistics into `tokenize.stats_file`."""
    base = gemma.load_base(params.model.base_dir)
    all_stats = {}
    with atomic.atomic_dir(params.tokenize.out_dir) as staging:
        for split_name in SPLITS:
            examples = pd.read_parquet(params.preprocess.split_path(split_name))
            split, stats = tokenize_examples(examples, base.tokenizer, params.train.sequence_length, params.train.loss_on)
            split.save(staging / params.tokenize.split_path(split_name).name)
            all_stats[split_name] = stats
            log.info("%s: %s", split_name, stats)
            if stats["truncated_examples"]:
                log.warning("%s: %d examples truncated to %d tokens (%d history turns dropped, %d user / %d response tokens cut)",
                            split_name, stats["truncated_examples"], params.train.sequence_length + 1,
                            stats["dropped_history_turns"], stats["cut_user_tokens"], stats["cut_response_tokens"])  # fmt: skip
    atomic.write_json(params.tokenize.stats_file, all_stats)
    return all_stats


def main(argv: list[str] | None = None) -> int:
    params = stage_params(__doc__, argv)
    run(params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
