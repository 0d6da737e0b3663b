from pathlib import Path

import pytest

from maeum.config import ParamsError, load_params

REPO = Path(__file__).resolve().parents[2]


def test_repository_params_keep_the_2b_recipe_and_a_tiny_profile():
    recipe = load_params(REPO / "params.yaml", {"model.preset": "gemma2_instruct_2b_en"})
    assert recipe.data.raw_dir == Path("data/sample")
    assert recipe.preprocess.max_history_turns == 4
    assert (recipe.train.lora_rank, recipe.train.lora_targets, recipe.train.epochs) == (2, "query_value", 2)
    assert recipe.train.learning_rate == pytest.approx(1e-4) and recipe.train.weight_decay == pytest.approx(0.01)
    assert recipe.train.lr_schedule == "constant" and recipe.train.gradient_clip_norm is None
    assert recipe.train.sequence_length == 256 and recipe.train.loss_on == "response"
    assert (recipe.train.padding, recipe.train.batch_size) == ("bucket", 8)  # the original recipe: fixed, 1
    tiny = load_params(REPO / "params.yaml")
    assert tiny.model.preset == "tiny" and tiny.train.lora_rank == tiny.train.tiny["lora_rank"] != recipe.train.lora_rank
    assert tiny.train.learning_rate > recipe.train.learning_rate and tiny.train.epochs >= recipe.train.epochs


def test_tiny_profile_overrides_only_train_keys_and_only_for_the_tiny_preset(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lora_rank: 2\n  tiny:\n    lora_rank: 8\n")
    assert load_params(path).train.lora_rank == 8
    assert load_params(path, {"model.preset": "/data/presets/gemma2"}).train.lora_rank == 2
    path.write_text("train:\n  tiny:\n    sequence_length: 64\n")  # tokenize reads it: one value for every preset
    with pytest.raises(ParamsError, match="train.tiny may override only"):
        load_params(path)
    path.write_text("train:\n  tiny:\n    epochs: many\n")
    with pytest.raises(ParamsError, match=r"train\.tiny\.epochs"):
        load_params(path)


def test_unknown_key_is_an_error_naming_it(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lora_rnak: 4\n")
    with pytest.raises(ParamsError, match=r"train\.lora_rnak"):
        load_params(path)


@pytest.mark.parametrize("text, key", [("train:\n  epochs: two\n", "train.epochs"),
                                       ("train:\n  loss_on: prompt\n", "train.loss_on"),
                                       ("train:\n  shuffle: 1\n", "train.shuffle")])  # fmt: skip
def test_wrong_types_are_errors(tmp_path, text, key):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        load_params(path)


def test_dotted_overrides_apply_and_are_checked(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 2\n")
    params = load_params(path, {"train.epochs": 1, "train.lora_rank": 4, "data.raw_dir": "data/raw"})
    assert (params.train.epochs, params.train.lora_rank, params.data.raw_dir) == (1, 4, Path("data/raw"))
    with pytest.raises(ParamsError):
        load_params(path, {"train.nope": 1})


def test_missing_file_says_where_to_run(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "absent.yaml")


def test_flat_dict_holds_every_section():
    flat = load_params(REPO / "params.yaml").as_flat_dict()
    assert flat["train.lora_rank"] == 8 and flat["model.tiny.hidden_dim"] == 64 and flat["data.raw_dir"] == "data/sample"
    assert flat["safety.rules_file"] == "data/safety/rules.yaml" and flat["promotion.mode"] == "auto"
    assert "source" not in flat
