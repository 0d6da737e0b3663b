"""tokenize stage: response-only loss weights, `loss_on: all`, and truncation that keeps the response."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from maeum import gemma
from maeum.dialogue import END_OF_TURN
from maeum.gemma import decode
from maeum.tokenized import TokenizedSplit, tokenize_examples


@pytest.fixture(scope="module")
def base(prepared, pipeline_dir):
    return gemma.load_base(pipeline_dir / prepared.model.base_dir)


def test_response_mask_covers_exactly_the_response_and_its_end_marker(prepared, pipeline_dir, base):
    examples = pd.read_parquet(pipeline_dir / prepared.preprocess.split_path("validation"))
    split = TokenizedSplit.load(pipeline_dir / prepared.tokenize.split_path("validation"))
    uncut, _ = tokenize_examples(examples, base.tokenizer, 100_000, "response")
    whole = [i for i in range(len(split)) if split.lengths[i] == uncut.lengths[i]][:5]  # examples that nothing was cut from
    assert len(whole) == 5
    for index in whole:
        ids, weights = split.example(index)
        prompt_length = split.prompt_lengths[index]
        assert np.all(weights[:prompt_length] == 0) and np.all(weights[prompt_length:] == 1)
        assert decode(base.tokenizer, ids[weights == 1]) == examples.loc[index, "response_text"] + END_OF_TURN
        assert ids[0] == base.tokenizer.token_to_id("<bos>")
        assert decode(base.tokenizer, ids[1:prompt_length]) == examples.loc[index, "prompt"]


def test_loss_on_all_weights_every_token(prepared, pipeline_dir, base):
    examples = pd.read_parquet(pipeline_dir / prepared.preprocess.split_path("validation")).head(3)
    split, _ = tokenize_examples(examples, base.tokenizer, 256, "all")
    assert np.all(split.weights == 1)


def test_truncation_drops_history_and_keeps_the_response(prepared, pipeline_dir, base):
    examples = pd.read_parquet(pipeline_dir / prepared.preprocess.split_path("train"))
    third_turns = examples[examples["turn"] == 3].head(5).reset_index(drop=True)
    full, _ = tokenize_examples(third_turns, base.tokenizer, 1024, "response")
    budget = int(full.lengths.min()) - 8  # forces every example to give something up
    short, stats = tokenize_examples(third_turns, base.tokenizer, budget, "response")
    assert stats["truncated_examples"] == 5 and stats["dropped_history_turns"] >= 5 and stats["cut_response_tokens"] == 0
    assert int(short.lengths.max()) <= budget + 1
    for index in range(5):
        full_ids, full_weights = full.example(index)
        short_ids, short_weights = short.example(index)
        assert short_ids[short_weights == 1].tolist() == full_ids[full_weights == 1].tolist()
        assert short_ids[-len(third_turns.loc[index, "response_text"]) :].size  # response present
        user_tail = full.prompt(index)[-12:].tolist()
        assert short.prompt(index)[-12:].tolist() == user_tail  # the end of the user turn survives
