"""The emotion stage on the sample corpus, run once per module in a temporary folder (preprocess first)."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from maeum.config import load_params
from maeum.corpus import EMOTION_GROUPS
from maeum.emotion import CARD_FILE, MODEL_FILE, EmotionClassifier, EmotionModelError, fit
from tests.conftest import SAMPLE_DIR, working_dir

STAGE_PARAMS = """\
data:
  raw_dir: {raw_dir}
"""
ACCURACY_FLOOR = 0.7  # 0.85 on the sample corpus with seed 11; the most frequent group is 0.26
GROUP_RECALL_FLOOR = 0.5  # the lowest group (상처) scored 0.69
ROUND_TRIP_EXAMPLES = 300  # enough replies of every group to fit, few enough to fit in a second
PLAIN_REPLIES = {
    "분노": "그 사람 때문에 정말 화가 나셨겠어요.",
    "슬픔": "많이 슬프셨겠어요. 눈물이 나는 게 당연해요.",
    "불안": "시험 결과가 걱정되어 불안하시군요.",
    "상처": "친구한테 배신당해서 마음이 많이 다치셨겠어요.",
    "당황": "사람들 앞에서 넘어져서 정말 당황스러웠겠다.",
    "기쁨": "정말 축하해! 너무 기쁘겠다.",
}


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """The preprocess and emotion stages run in-process: (params, metrics, folder)."""
    from tasks import emotion, preprocess

    folder = tmp_path_factory.mktemp("emotion")
    (folder / "params.yaml").write_text(STAGE_PARAMS.format(raw_dir=SAMPLE_DIR), encoding="utf-8")
    with working_dir(folder, {}):
        params = load_params("params.yaml")
        preprocess.run(params)
        metrics = emotion.run(params)
    return params, metrics, folder


@pytest.fixture(scope="module")
def validation(stage) -> pd.DataFrame:
    params, _, folder = stage
    return pd.read_parquet(folder / params.preprocess.split_path("validation"))


@pytest.fixture(scope="module")
def classifier(stage) -> EmotionClassifier:
    params, _, folder = stage
    return EmotionClassifier.load(folder / params.emotion.model_dir)


@pytest.fixture
def model_copy(stage, tmp_path):
    params, _, folder = stage
    return shutil.copytree(folder / params.emotion.model_dir, tmp_path / "emotion")


def test_validation_accuracy_is_clearly_above_the_majority_rate(stage):
    _, metrics, _ = stage
    assert metrics["majority_rate"] < 0.5
    assert metrics["accuracy"] >= max(ACCURACY_FLOOR, 2 * metrics["majority_rate"])


def test_every_emotion_group_is_recalled(stage):
    _, metrics, _ = stage
    assert list(metrics["recall"]) == list(EMOTION_GROUPS)
    assert min(metrics["recall"].values()) >= GROUP_RECALL_FLOOR


def test_metrics_file_holds_what_the_stage_returned(stage):
    params, metrics, folder = stage
    written = json.loads((folder / params.emotion.metrics_file).read_text(encoding="utf-8"))
    assert written == metrics
    assert written["validation_examples"] == 237


def test_model_folder_holds_the_model_and_its_card_only(stage):
    params, _, folder = stage
    model_dir = folder / params.emotion.model_dir
    assert sorted(path.name for path in model_dir.iterdir()) == sorted([MODEL_FILE, CARD_FILE])
    assert [path.name for path in model_dir.parent.iterdir()] == [model_dir.name]  # no staging folder left behind


def test_saved_model_reproduces_the_validation_accuracy(stage, classifier, validation):
    _, metrics, _ = stage
    predicted = np.array(classifier.predict(validation["response_text"].tolist()))
    assert (predicted == validation["emotion_group"].to_numpy()).mean() == pytest.approx(metrics["accuracy"])


@pytest.mark.parametrize("group", list(PLAIN_REPLIES))
def test_plainly_worded_reply_reads_as_its_group(classifier, group):
    assert classifier.predict([PLAIN_REPLIES[group]]) == [group]


def test_save_and_load_give_identical_predictions(stage, validation, tmp_path):
    params, _, folder = stage
    train = pd.read_parquet(folder / params.preprocess.split_path("train")).head(ROUND_TRIP_EXAMPLES)
    fitted = fit(train["response_text"].tolist(), train["emotion_group"].tolist(), seed=params.emotion.seed)
    fitted.save(tmp_path / "model")
    loaded = EmotionClassifier.load(tmp_path / "model")
    texts = validation["response_text"].tolist()
    assert loaded.predict(texts) == fitted.predict(texts)
    np.testing.assert_allclose(loaded.model.predict_proba(texts), fitted.model.predict_proba(texts))
    assert loaded.groups == fitted.groups == sorted(set(train["emotion_group"]))


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(EmotionModelError, match=r"emotion\.joblib missing; run the emotion stage \(`dvc repro emotion`\)"):
        EmotionClassifier.load(tmp_path)


def test_truncated_model_file_is_a_clear_error(model_copy):
    model_file = model_copy / MODEL_FILE
    model_file.write_bytes(model_file.read_bytes()[:1000])
    with pytest.raises(EmotionModelError, match=r"emotion\.joblib cannot be loaded"):
        EmotionClassifier.load(model_copy)


def test_model_file_holding_something_else_is_a_clear_error(model_copy):
    import joblib

    joblib.dump({"not": "a model"}, model_copy / MODEL_FILE)
    with pytest.raises(EmotionModelError, match="holds a dict, not a fitted classifier"):
        EmotionClassifier.load(model_copy)


def test_broken_card_is_a_clear_error(model_copy):
    (model_copy / CARD_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(EmotionModelError, match=r"emotion\.json is not a readable JSON card"):
        EmotionClassifier.load(model_copy)


def test_model_from_another_scikit_learn_version_is_refused(model_copy):
    card = json.loads((model_copy / CARD_FILE).read_text(encoding="utf-8"))
    (model_copy / CARD_FILE).write_text(json.dumps({**card, "scikit_learn": "0.0"}), encoding="utf-8")
    with pytest.raises(EmotionModelError, match=r"written by scikit-learn 0\.0, this is .*dvc repro -f emotion"):
        EmotionClassifier.load(model_copy)


@pytest.mark.parametrize(("groups", "message"), [
    (["분노", "행복"], "unknown emotion group"),
    (["분노", "분노"], "at least two emotion groups"),
    (["분노"], "2 texts but 1 groups"),
])  # fmt: skip
def test_fit_rejects_unusable_labels(groups, message):
    with pytest.raises(ValueError, match=message):
        fit(["화가 나셨겠어요", "속상하셨겠어요"], groups, seed=0)
