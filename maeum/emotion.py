"""A classifier of the corpus's six emotion groups (분노 … 기쁨), read from a listener's reply.

Evaluate asks of every generated reply whether it reflects the emotion of its dialogue
(`maeum.metrics.emotion_reflection`); this model says which emotion a reply reads as. It is
trained on the corpus's own replies (`response_text`), each labelled with its dialogue's
`emotion_group`, so it learns how the corpus's listeners answer anger, sadness or joy.

Features follow the safety screen's recipe (`maeum.safety.classifier`): TF-IDF over character
1-4-grams (robust to spacing and to words the morpheme analyser does not know) and over
kiwipiepy morpheme 1-2-grams (속상하셨겠어요 and 속상했구나 share 속상하), then logistic
regression. It trains on two CPU cores in seconds.

The artifact is a joblib file plus a JSON card a person can read (groups, sizes, scikit-learn
version); `EmotionClassifier.load` refuses a model written by another scikit-learn version,
because pickles do not carry across versions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from maeum.corpus import EMOTION_GROUPS
from maeum.metrics import morphemes

MODEL_FILE = "emotion.joblib"
CARD_FILE = "emotion.json"
CHAR_NGRAMS = (1, 4)
MORPHEME_NGRAMS = (1, 2)
MIN_DF = 2  # a feature seen in one reply only is that reply's wording, not the group's
# Inverse L2 strength, chosen by 5-fold cross-validation, grouped by dialogue, on the sample corpus's
# training split (C = 1, 4, 16 scored 88.3 %, 88.8 %, 88.8 %); validation is only reported, never tuned on.
REGULARISATION = 4.0
MAX_ITERATIONS = 5000


class EmotionModelError(ValueError):
    """The emotion model is missing, unreadable, or was written by another scikit-learn version."""


def make_model(seed: int) -> Any:
    """An untrained pipeline over raw reply texts: character and morpheme TF-IDF, then logistic regression.

    Args:
        seed: the classifier's random state.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline

    features = FeatureUnion([
        ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=CHAR_NGRAMS, min_df=MIN_DF, sublinear_tf=True)),
        # `morphemes` is stored in the pickle by name: moving it breaks saved models (load says so).
        ("morphemes", TfidfVectorizer(tokenizer=morphemes, token_pattern=None, lowercase=False,
                                      ngram_range=MORPHEME_NGRAMS, min_df=MIN_DF, sublinear_tf=True)),
    ])  # fmt: skip
    # Balanced weights: the groups are not equally frequent, and a reply should not read as
    # 불안 just because 불안 dialogues are the most common.
    classifier = LogisticRegression(C=REGULARISATION, class_weight="balanced", max_iter=MAX_ITERATIONS, random_state=seed)
    return Pipeline([("features", features), ("classifier", classifier)])


@dataclass
class EmotionClassifier:
    """A fitted emotion-group model and the card saved next to it.

    Attributes:
        model: the scikit-learn pipeline from `make_model`, fitted.
        card: what a person reads about it (groups, sizes, metrics); saved as JSON.
    """

    model: Any
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def groups(self) -> list[str]:
        """The groups the model can predict, in its own order."""
        return [str(group) for group in self.model.classes_]

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The emotion group each text reads as (an empty list for no texts)."""
        if not len(texts):
            return []
        return [str(group) for group in self.model.predict(list(texts))]

    def save(self, folder: Path) -> None:
        """Writes the model and its card into `folder` (each file atomically)."""
        import joblib

        from maeum import atomic

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(folder / MODEL_FILE) as tmp:
            joblib.dump(self.model, tmp)
        atomic.write_json(folder / CARD_FILE, {**self.card, "groups": self.groups,
                                               "scikit_learn": metadata.version("scikit-learn")})  # fmt: skip

    @classmethod
    def load(cls, folder: Path) -> EmotionClassifier:
        """Loads the emotion stage's output.

        Raises:
            EmotionModelError: a file is missing or unreadable, or the model was written by
                another scikit-learn version.
        """
        import joblib

        folder = Path(folder)
        card_path, model_path = folder / CARD_FILE, folder / MODEL_FILE
        rerun = "run the emotion stage (`dvc repro emotion`)"
        missing = [path.name for path in (card_path, model_path) if not path.is_file()]
        if missing:
            raise EmotionModelError(f"emotion model incomplete in {folder}: {', '.join(missing)} missing; {rerun}")
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise EmotionModelError(f"{card_path} is not a readable JSON card ({error}); {rerun}") from None
        written_by = card.get("scikit_learn") if isinstance(card, dict) else None
        installed = metadata.version("scikit-learn")
        if written_by != installed:
            raise EmotionModelError(f"{model_path} was written by scikit-learn {written_by}, this is {installed}: "
                                    "pickles do not carry across versions; rerun with `dvc repro -f emotion`")  # fmt: skip
        try:
            model = joblib.load(model_path)
        except Exception as error:  # a truncated or foreign pickle raises many types; all mean "cannot use it"
            raise EmotionModelError(f"{model_path} cannot be loaded ({type(error).__name__}: {error}); {rerun}") from None
        if not hasattr(model, "predict") or not hasattr(model, "classes_"):
            raise EmotionModelError(f"{model_path} holds a {type(model).__name__}, not a fitted classifier; {rerun}")
        return cls(model, card)


def fit(texts: Sequence[str], groups: Sequence[str], seed: int) -> EmotionClassifier:
    """Trains the classifier on replies labelled with their dialogue's emotion group.

    Args:
        texts: listener replies.
        groups: the emotion group (a key of `EMOTION_GROUPS`) of each reply's dialogue.
        seed: the classifier's random state.

    Returns:
        The fitted classifier, its card holding the training size per group.

    Raises:
        ValueError: the lists differ in length, a label is not an emotion group, or fewer
            than two groups occur.
    """
    if len(texts) != len(groups):
        raise ValueError(f"{len(texts)} texts but {len(groups)} groups")
    unknown = sorted({str(group) for group in groups} - set(EMOTION_GROUPS))
    if unknown:
        raise ValueError(f"unknown emotion group(s) {unknown}; expected {list(EMOTION_GROUPS)}")
    if len(set(groups)) < 2:
        raise ValueError(f"need replies of at least two emotion groups to train, got {sorted(set(groups))}")
    from threadpoolctl import threadpool_limits

    # The problem is small; BLAS threads only fight over shared cores (LR fit 3.5 s with two
    # threads, 0.4 s with one, on the 2 busy cores of the project's machine).
    with threadpool_limits(limits=1):
        model = make_model(seed).fit(list(texts), list(groups))
    sizes = {group: sum(label == group for label in groups) for group in EMOTION_GROUPS if group in set(groups)}
    return EmotionClassifier(model, {"seed": seed, "train_examples": len(texts), "train_per_group": sizes})
