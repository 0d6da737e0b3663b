"""The fast data path changes speed, never the loss: buckets, batches and padding are loss-neutral."""

from __future__ import annotations

import numpy as np
import pytest

from maeum import batching, gemma
from maeum.config import TinyModelParams
from maeum.tokenized import TokenizedSplit

TINY = TinyModelParams(num_layers=2, hidden_dim=16, intermediate_dim=32, head_dim=8, sliding_window_size=256)
VOCAB = 64


def ragged_split(lengths: list[int], prompt_fraction: float = 0.6, seed: int = 0) -> TokenizedSplit:
    rng = np.random.default_rng(seed)
    ids, weights, offsets, prompts = [], [], [0], []
    for length in lengths:
        prompt = max(1, int(length * prompt_fraction))
        ids += rng.integers(4, VOCAB, size=length).tolist()
        weights += [0.0] * prompt + [1.0] * (length - prompt)
        offsets.append(len(ids))
        prompts.append(prompt)
    return TokenizedSplit(
        ids=np.asarray(ids, "int32"), weights=np.asarray(weights, "float32"), offsets=np.asarray(offsets, "int64"),
        prompt_lengths=np.asarray(prompts, "int32"), talk_ids=np.asarray([f"t{i}" for i in range(len(lengths))]),
        turns=np.ones(len(lengths), "int32"),
    )  # fmt: skip


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_bucketing_loses_and_duplicates_no_example_and_pads_to_the_smallest_bucket(batch_size):
    lengths = np.random.default_rng(1).integers(5, 257, size=101)
    boundaries = [64, 128, 192, 256]
    plans = batching.plan_batches(lengths, boundaries, batch_size, np.random.default_rng(7))
    indices = np.concatenate([p.indices for p in plans])
    real = indices[indices != batching.PAD_ROW]
    assert sorted(real.tolist()) == list(range(101))
    assert all(len(p.indices) == batch_size for p in plans)
    for plan in plans:
        longest = lengths[plan.indices[plan.indices != batching.PAD_ROW]].max()
        assert plan.length == min(b for b in boundaries if b >= longest)


def test_sorted_batches_pad_less_than_random_batches_of_the_same_buckets():
    lengths = np.clip(np.random.default_rng(4).lognormal(np.log(75), 0.25, 512).round(), 16, 256).astype(int)
    boundaries = batching.best_boundaries(lengths, 16, 256)
    sorted_plans = batching.plan_batches(lengths, boundaries, 8, np.random.default_rng(0))
    assert batching.padding_stats(lengths, sorted_plans)["pad_fraction"] < 0.05
    one_shape = batching.plan_batches(lengths, [256], 8, np.random.default_rng(0))
    assert batching.padding_stats(lengths, one_shape)["pad_fraction"] > 0.6


def test_best_boundaries_are_exact_and_end_at_the_longest_allowed_length():
    lengths = np.asarray([10, 10, 10, 20, 20, 40])
    assert batching.best_boundaries(lengths, 1, 64) == [64]
    assert batching.best_boundaries(lengths, 3, 64) == [10, 20, 64]  # padding 24 (40 -> 64); any other choice pads more
    assert batching.best_boundaries(lengths, 10, 64) == [10, 20, 40, 64]  # no more shapes than distinct lengths
    assert batching.best_boundaries(np.asarray([300]), 4, 256) == [256]


def test_shuffling_is_reproducible_from_the_seed_and_changes_per_epoch():
    lengths = np.random.default_rng(2).integers(5, 257, size=60)

    def order(epoch):
        plans = batching.plan_batches(lengths, [64, 128, 256], 4, np.random.default_rng([42, epoch]))
        return np.concatenate([p.indices for p in plans]).tolist()

    assert order(0) == order(0)
    assert order(0) != order(1)


def test_example_longer_than_the_last_bucket_is_an_error():
    with pytest.raises(ValueError, match="largest bucket"):
        batching.bucket_lengths(np.asarray([10, 300]), [64, 256])


@pytest.fixture(scope="module")
def causal_lm():
    import keras
    import keras_hub

    keras.utils.set_random_seed(3)
    model = keras_hub.models.GemmaCausalLM(backbone=gemma.tiny_backbone(TINY, VOCAB), preprocessor=None)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight"),
                  weighted_metrics=[])  # fmt: skip
    return model


def per_token_losses(model, x, y):
    import keras

    logits = model.predict_on_batch(x)
    return keras.ops.convert_to_numpy(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))


def test_batch_loss_is_the_mean_over_response_tokens_of_its_examples(causal_lm):
    split = ragged_split([30, 50, 41, 12, 60])
    plan = batching.BatchPlan(64, np.asarray([0, 1, 2, 3, 4, batching.PAD_ROW]))
    x, y, weights = batching.make_batch(split.ids, split.weights, split.offsets, plan)
    batch_loss = float(causal_lm.test_on_batch(x, y, sample_weight=weights))
    token_sum, token_count = 0.0, 0.0
    for index in range(5):  # each example alone, unpadded
        alone = batching.make_batch(split.ids, split.weights, split.offsets, batching.BatchPlan(int(split.lengths[index]) - 1, np.asarray([index])))
        losses = per_token_losses(causal_lm, alone[0], alone[1])
        token_sum += float((losses * alone[2]).sum())
        token_count += float(alone[2].sum())
    assert batch_loss == pytest.approx(token_sum / token_count, rel=1e-4)


def test_fixed_256_and_bucketed_padding_give_the_same_loss(causal_lm):
    split = ragged_split([45])
    fixed = batching.make_batch(split.ids, split.weights, split.offsets, batching.BatchPlan(256, np.asarray([0])))
    bucket = batching.make_batch(split.ids, split.weights, split.offsets, batching.BatchPlan(64, np.asarray([0])))
    loss_fixed = float(causal_lm.test_on_batch(*fixed))
    loss_bucket = float(causal_lm.test_on_batch(*bucket))
    assert loss_fixed == pytest.approx(loss_bucket, rel=1e-5)
    stats_fixed = batching.padding_stats(np.asarray([44]), [batching.BatchPlan(256, np.asarray([0]))])
    assert stats_fixed["pad_fraction"] == pytest.approx(1 - 44 / 256)
