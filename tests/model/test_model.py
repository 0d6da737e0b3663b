"""The tiny Gemma2-shaped preset: its config, LoRA on it, saving and reloading adapters, replies."""

from __future__ import annotations

import numpy as np
import pytest

from maeum import gemma
from maeum.config import ModelParams, TinyModelParams

TINY = TinyModelParams(num_layers=2, hidden_dim=16, intermediate_dim=32, num_query_heads=4, num_key_value_heads=2,
                       head_dim=8, sliding_window_size=16, pretrain_epochs=0)  # fmt: skip
VOCAB = 300


@pytest.fixture
def backbone():
    import keras

    keras.utils.set_random_seed(0)
    return gemma.tiny_backbone(TINY, VOCAB)


def test_tiny_backbone_is_gemma2_shaped(backbone):
    config = backbone.get_config()
    # GemmaBackbone silently drops unknown keywords: check each Gemma2 feature really took.
    assert config["query_head_dim_normalize"] is True
    assert config["use_post_ffw_norm"] is True and config["use_post_attention_norm"] is True
    assert config["attention_logit_soft_cap"] == 50.0 and config["final_logit_soft_cap"] == 30.0
    assert config["use_sliding_window_attention"] is True and config["sliding_window_size"] == 16
    assert (config["num_layers"], config["hidden_dim"], config["num_query_heads"], config["num_key_value_heads"],
            config["head_dim"], config["vocabulary_size"]) == (2, 16, 4, 2, 8, VOCAB)  # fmt: skip


def test_forward_shape(backbone):
    tokens = np.ones((2, 12), dtype="int32")
    out = backbone({"token_ids": tokens, "padding_mask": np.ones_like(tokens, dtype=bool)})
    assert tuple(out.shape) == (2, 12, 16)


def test_enable_lora_trains_exactly_the_query_and_value_factors(backbone):
    rank = 2
    backbone.enable_lora(rank=rank)
    trainable = backbone.trainable_weights
    # Per layer: query kernel (heads, hidden, head_dim) and value kernel (kv_heads, hidden, head_dim),
    # each factored into A (..., hidden, rank) and B (rank, head_dim).
    per_layer = (4 * 16 * rank + rank * 8) + (2 * 16 * rank + rank * 8)
    assert len(trainable) == 2 * 2 * TINY.num_layers
    assert sum(int(np.prod(w.shape)) for w in trainable) == per_layer * TINY.num_layers
    assert all("lora" in w.path for w in trainable)


def test_lora_weights_saved_and_reloaded_give_the_same_outputs(backbone, tmp_path):
    import keras

    backbone.enable_lora(rank=2)
    for weight in backbone.trainable_weights:  # B starts at zero; make the adapter non-trivial
        weight.assign(np.random.default_rng(1).normal(size=weight.shape).astype("float32") * 0.1)
    inputs = {"token_ids": np.arange(1, 13, dtype="int32")[None], "padding_mask": np.ones((1, 12), dtype=bool)}
    expected = keras.ops.convert_to_numpy(backbone(inputs))
    path = tmp_path / "adapter.lora.h5"
    backbone.save_lora_weights(str(path))

    keras.utils.set_random_seed(0)
    fresh = gemma.tiny_backbone(TINY, VOCAB)
    assert not np.allclose(keras.ops.convert_to_numpy(fresh(inputs)), expected, atol=1e-5)
    fresh.enable_lora(rank=2)
    fresh.load_lora_weights(str(path))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(fresh(inputs)), expected, atol=1e-5)


def test_tokenizer_has_gemma_special_pieces_and_atomic_chat_markers():
    import keras_hub

    texts = ["<start_of_turn>user\n요즘 너무 지쳐<end_of_turn>\n<start_of_turn>model\n많이 힘들었구나<end_of_turn>\n"] * 20
    tokenizer = keras_hub.models.GemmaTokenizer(proto=gemma.train_tokenizer_proto(texts, 400))
    assert [tokenizer.token_to_id(p) for p in ("<pad>", "<eos>", "<bos>", "<unk>")] == [0, 1, 2, 3]
    whole = [int(i) for i in tokenizer(texts[0])]
    pieces = ["<start_of_turn>user\n", "요즘 너무 지쳐", "<end_of_turn>\n<start_of_turn>model\n", "많이 힘들었구나", "<end_of_turn>\n"]
    assert whole == [int(i) for piece in pieces for i in tokenizer(piece)]
    assert tokenizer.token_to_id("<start_of_turn>") in whole and tokenizer.token_to_id("<end_of_turn>") in whole


def test_tiny_base_is_reproducible_from_the_seed():
    texts = ["오늘 회사에서 너무 힘들었어", "친구가 내 말을 무시해서 속상해", "시험을 잘 봐서 기분이 좋아"] * 30
    params = ModelParams(tiny=TinyModelParams(num_layers=1, hidden_dim=16, intermediate_dim=32, head_dim=8,
                                              vocabulary_size=400, pretrain_epochs=1, pretrain_sequence_length=16))  # fmt: skip
    first = gemma.build_tiny_base(texts, texts, params)
    second = gemma.build_tiny_base(texts, texts, params)
    assert first.preprocessor.tokenizer.proto == second.preprocessor.tokenizer.proto
    for a, b in zip(first.backbone.weights, second.backbone.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(gemma.WeightsUnavailable, match="neither a known preset"):
        gemma.resolve_base(ModelParams(preset="gemma9_huge"))


def test_real_preset_offline_fails_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    params = ModelParams(preset="gemma2_instruct_2b_en", kaggle_handles={"gemma2_instruct_2b_en": "keras/gemma2/keras/gemma2_instruct_2b_en/1"})
    with pytest.raises(gemma.WeightsUnavailable) as error:
        gemma.resolve_base(params)
    message = str(error.value)
    assert "offline" in message and "KAGGLEHUB_CACHE" in message and "preset folder" in message
    assert "Traceback" not in message


def test_local_preset_folder_is_used_as_is(tmp_path):
    folder = tmp_path / "my_preset"
    folder.mkdir()
    assert gemma.resolve_base(ModelParams(preset=str(folder))) == folder
