from pathlib import Path

import pytest

from maeum.config import ParamsError, load_params

REPO = Path(__file__).resolve().parents[2]


def test_repository_params_load_with_recipe_defaults():
    params = load_params(REPO / "params.yaml")
    assert params.data.raw_dir == Path("data/sample")
    assert params.preprocess.max_history_turns == 4
    assert (params.train.lora_rank, params.train.epochs) == (2, 2)
    assert (params.train.padding, params.train.batch_size) == ("bucket", 8)  # the original recipe: fixed, 1
    assert params.train.learning_rate == pytest.approx(1e-4) and params.train.weight_decay == pytest.approx(0.01)
    assert params.train.sequence_length == 256 and params.train.loss_on == "response"


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
    assert flat["train.lora_rank"] == 2 and flat["model.tiny.hidden_dim"] == 64 and flat["data.raw_dir"] == "data/sample"
    assert "source" not in flat
