"""The learned screen: a classifier of crisis risk over character and morpheme n-grams.

Rules catch explicit language precisely, but each new phrasing needs a new rule. The classifier
generalises from the labelled set in data/safety/ (every message written by the project, none
from real users): logistic regression over TF-IDF features of three views of each message
(`maeum.safety.normalise.Views`): character 1-4-grams of the canonical text, character 2-5-grams
of its compact form (robust to spacing tricks and typos) and morpheme 1-3-grams (conjugations
and particles generalise: 끝내기로 했다 and 끝낼 거야 share 끝내다). It fits two CPU cores in
seconds and a message is scored in about a millisecond.

Two models share one set of features: `risk` (crisis vs safe; its probability is the screen's
score) and `kind` (which crisis category, over crisis messages only), which says whether a message
is about someone else (`third_person`) and names the likely category in the reason a reviewer
reads. A third, `reply`, with features of its own, tells harmful model replies from safe ones.

Thresholds are chosen on a validation split, recall first (`choose_thresholds`), then the
three models are refitted on the whole labelled set. The artifact is a joblib file plus a JSON file
a person can read (thresholds, data versions, validation numbers).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from maeum.safety.rules import SafetyConfigError

MODEL_FILE = "classifier.joblib"
CARD_FILE = "screen.json"
THIRD_PERSON = "third_person"
FEATURE_COLUMNS = ("text", "compact", "lemmas")
REGULARISATION = 4.0  # inverse L2 strength; chosen on the validation split (higher overfits the writers' style)
COUNT_TOLERANCE = 1e-9  # share x count is a whole number of messages: 0.28 * 25 = 7.000000000000001 must not need 8


@dataclass(frozen=True)
class Thresholds:
    """Classifier scores at which a message gets each level (see `choose_thresholds`).

    Attributes:
        check_in: the highest score that kept the validation crisis recall at the target.
        crisis: the lowest score that kept crisis on safe validation messages within the target rate.
        reply: the reply classifier's score at which a model reply is replaced in a conversation that
            shows any risk (harmful recall first).
        reply_ordinary: the same in a conversation without any risk signal: the lowest score that keeps
            replaced safe validation replies within `safety.reply_safe_rate`, never below `reply`.
    """

    check_in: float
    crisis: float
    reply: float
    reply_ordinary: float


def feature_frame(rows: list[Any]) -> Any:
    """A DataFrame with one column per view, from `Views` objects."""
    import pandas as pd

    return pd.DataFrame([{column: getattr(row, column) for column in FEATURE_COLUMNS} for row in rows], columns=FEATURE_COLUMNS)


def make_features() -> Any:
    """Untrained TF-IDF features of each view."""
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer

    return ColumnTransformer([
        ("text_chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), min_df=2, sublinear_tf=True), "text"),
        ("compact_chars", TfidfVectorizer(analyzer="char", ngram_range=(2, 5), min_df=2, sublinear_tf=True), "compact"),
        ("morphemes", TfidfVectorizer(token_pattern=r"[^ ]+", lowercase=False, ngram_range=(1, 3), min_df=2,
                                      sublinear_tf=True), "lemmas"),
    ])  # fmt: skip


def make_classifier(seed: int) -> Any:
    """Untrained logistic regression, classes weighted to balance."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=REGULARISATION, class_weight="balanced", max_iter=5000, random_state=seed)


def make_model(seed: int) -> Any:
    """An untrained pipeline of its own features and a classifier (the reply model)."""
    from sklearn.pipeline import Pipeline

    return Pipeline([("features", make_features()), ("classifier", make_classifier(seed))])


def positive_scores(model: Any, features: Any, positive: str) -> np.ndarray:
    """The probability of class `positive` for each row (`features`: a frame for a pipeline, a matrix for a classifier)."""
    column = list(model.classes_).index(positive)
    return model.predict_proba(features)[:, column]


def recall_threshold(scores: np.ndarray, target_recall: float) -> float:
    """The highest threshold t with mean(scores >= t) >= target_recall (positives' scores)."""
    ordered = np.sort(np.asarray(scores))[::-1]
    needed = int(np.ceil(target_recall * len(ordered) - COUNT_TOLERANCE))
    return float(ordered[max(needed, 1) - 1])


def rate_threshold(scores: np.ndarray, max_rate: float) -> float:
    """The lowest threshold t with mean(scores >= t) <= max_rate (negatives' scores)."""
    ordered = np.sort(np.asarray(scores))[::-1]
    allowed = int(np.floor(max_rate * len(ordered) + COUNT_TOLERANCE))
    return float(np.nextafter(ordered[allowed], np.inf)) if allowed < len(ordered) else 0.0


def choose_thresholds(crisis_scores: np.ndarray, safe_scores: np.ndarray, check_in_recall: float,
                      crisis_safe_rate: float) -> tuple[float, float]:  # fmt: skip
    """Thresholds from validation scores, recall first.

    Args:
        crisis_scores: risk scores of the crisis messages of the validation split.
        safe_scores: risk scores of its safe messages.
        check_in_recall: share of crisis messages that must reach check_in or above.
        crisis_safe_rate: most share of safe messages that may reach crisis.

    Returns:
        (check_in, crisis) with check_in <= crisis: recall decides check_in; crisis is the
        safe-rate bound, never below check_in.
    """
    check_in = recall_threshold(crisis_scores, check_in_recall)
    crisis = max(rate_threshold(safe_scores, crisis_safe_rate), check_in)
    return check_in, crisis


@dataclass
class TrainedScreen:
    """The fitted models and what the safety stage recorded about them."""

    features: Any
    risk: Any
    kind: Any
    reply: Any
    thresholds: Thresholds
    card: dict[str, Any]

    def risk_scores(self, frame: Any) -> np.ndarray:
        """Crisis probability of each message (a `feature_frame`)."""
        return positive_scores(self.risk, self.features.transform(frame), "crisis")

    def kinds(self, frame: Any) -> np.ndarray:
        """Crisis-category probabilities of each message; columns in `self.kind.classes_` order."""
        return self.kind.predict_proba(self.features.transform(frame))

    def save(self, folder: Path) -> None:
        import joblib

        from maeum import atomic

        folder.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(folder / MODEL_FILE) as tmp:
            joblib.dump({"features": self.features, "risk": self.risk, "kind": self.kind, "reply": self.reply}, tmp)
        atomic.write_json(folder / CARD_FILE, {**self.card, "thresholds": asdict(self.thresholds),
                                               "scikit_learn": metadata.version("scikit-learn")})  # fmt: skip

    @classmethod
    def load(cls, folder: Path) -> TrainedScreen:
        """Loads the safety stage's output.

        Raises:
            SafetyConfigError: the folder, a file or a threshold is missing or unreadable, or it was
                written by another scikit-learn version (pickles do not carry across versions).
        """
        import joblib

        folder = Path(folder)
        card_path, model_path = folder / CARD_FILE, folder / MODEL_FILE
        if not card_path.is_file() or not model_path.is_file():
            raise SafetyConfigError(f"safety classifier missing in {folder} (need {CARD_FILE} and {MODEL_FILE}): "
                                    "run the safety stage (`dvc repro safety`)")  # fmt: skip
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
            thresholds = Thresholds(**card["thresholds"])
        except (ValueError, KeyError, TypeError) as error:
            raise SafetyConfigError(f"{card_path} is not a valid safety screen card: {error!r}") from None
        installed = metadata.version("scikit-learn")
        if card.get("scikit_learn") != installed:
            raise SafetyConfigError(f"{model_path} was written by scikit-learn {card.get('scikit_learn')}, this is "
                                    f"{installed}: rerun the safety stage (`dvc repro -f safety`)")  # fmt: skip
        try:
            models = joblib.load(model_path)
            return cls(models["features"], models["risk"], models["kind"], models["reply"], thresholds, card)
        except Exception as error:  # a truncated or foreign pickle raises many types; all mean "cannot use it"
            raise SafetyConfigError(f"{model_path} cannot be loaded ({type(error).__name__}: {error})") from None
