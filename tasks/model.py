"""model stage: settle which base model every later stage loads.

`model.preset: tiny` builds the Gemma2-shaped tiny base from the training split and
`model.seed` (tokenizer, seeded weights, a short plain-text pretraining) and saves it as a
keras-hub preset folder. A real preset (`gemma2_instruct_2b_en`, `gemma2_2b_en`, or a local
preset folder) is resolved through kagglehub or the folder, and only a pointer is written, so
gigabytes of weights never enter the DVC cache. Either way `models/base/base.json` names the
folder that tokenize, train, evaluate and chat load: the *same* base everywhere.

    python -m tasks.model [--params params.yaml]
"""

from __future__ import annotations

import logging
import sys

import numpy as np
import pandas as pd

from maeum import atomic, gemma
from maeum.config import Params
from maeum.dialogue import ROLES, turn_block
from maeum.runtime import stage_params

log = logging.getLogger(__name__)


def tiny_base_texts(train_examples: pd.DataFrame, seed: int) -> tuple[list[str], list[str]]:
    """Text for the tiny tokenizer (whole formatted examples) and for pretraining (single turns).

    Returns:
        (tokenizer texts, pretraining texts). Pretraining sees each utterance once, alone, as one
        turn of the chat template under a random role, so the base knows the words, the markers and
        where a turn ends (the embedding of `<end_of_turn>` is tied to its output, which LoRA on the
        attention cannot train), but not the assistant's task: which reply follows which turn.
    """
    tokenizer_texts = (train_examples["prompt"] + train_examples["response"]).tolist()
    utterances = pd.unique(pd.concat([train_examples["user_text"], train_examples["response_text"]], ignore_index=True))
    roles = np.random.default_rng(seed).choice(ROLES, size=len(utterances))
    return tokenizer_texts, [turn_block(role, str(text)) for role, text in zip(roles, utterances)]


def run(params: Params) -> dict:
    """The stage: writes `model.base_dir` for the configured preset (see module docstring); returns its pointer."""
    base_dir = params.model.base_dir
    if params.model.preset != "tiny":
        path = gemma.resolve_base(params.model)
        with atomic.atomic_dir(base_dir) as staging:
            gemma.write_base_pointer(staging, params.model.preset, path.resolve())
        log.info("base %s -> %s", params.model.preset, path)
        return gemma.read_base_pointer(base_dir)
    train_examples = pd.read_parquet(params.preprocess.split_path("train"))
    tokenizer_texts, pretrain_texts = tiny_base_texts(train_examples, params.model.seed)
    causal_lm = gemma.build_tiny_base(tokenizer_texts, pretrain_texts, params.model, jit_compile=params.train.jit_compile)
    with atomic.atomic_dir(base_dir) as staging:
        causal_lm.save_to_preset(str(staging / gemma.TINY_PRESET_DIR))
        gemma.write_base_pointer(
            staging,
            "tiny",
            gemma.TINY_PRESET_DIR,  # relative to base_dir, so the folder can move with it
            {"seed": params.model.seed, "parameters": int(causal_lm.backbone.count_params()),
             "vocabulary_size": int(causal_lm.backbone.vocabulary_size)},
        )  # fmt: skip
    log.info("tiny base: %d parameters, vocabulary %d", causal_lm.backbone.count_params(), causal_lm.backbone.vocabulary_size)
    return gemma.read_base_pointer(base_dir)


def main(argv: list[str] | None = None) -> int:
    params = stage_params(__doc__, argv)
    try:
        run(params)
    except gemma.WeightsUnavailable as error:
        print(f"model: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
