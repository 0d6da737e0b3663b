"""Reviewers' ratings of served replies: written as MLflow feedback on each turn's trace, read back per model version.

`maeum serve` traces every turn in the experiment `serve_experiment(params.tracking)` and tags the
trace with the model version that answered (`TAG_MODEL_VERSION`: `maeum-lora/3` for a registered
version, else the adapter reference it was started with). A rating from the web page or
`POST /v1/feedback` becomes up to two MLflow feedback entries on that trace:

    helpful   bool          (rationale: the reviewer's note, if any)
    empathy   int 1..5

`feedback_by_version` summarises them per model version, for `maeum registry report` and model cards:

    from maeum.feedback import feedback_by_version, serve_experiment
    feedback_by_version(serve_experiment(params.tracking))["maeum-lora/3"].helpful_rate
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maeum import tracking
from maeum.config import TrackingParams

SERVE_EXPERIMENT_SUFFIX = "-serve"  # traces of served turns, apart from training runs
TAG_MODEL_VERSION = "maeum.model_version"
HELPFUL, EMPATHY = "helpful", "empathy"
EMPATHY_RANGE = (1, 5)
DEFAULT_REVIEWER = "reviewer"
TRACES_PAGE = 500  # traces fetched per search call (spans left out)


def serve_experiment(tracking_params: TrackingParams) -> str:
    """The experiment that holds served turns: `<tracking.experiment>-serve`."""
    return tracking_params.experiment + SERVE_EXPERIMENT_SUFFIX


@dataclass(frozen=True)
class VersionFeedback:
    """Ratings of one model version's served turns.

    Attributes:
        model_version: the `maeum.model_version` tag, e.g. "maeum-lora/3".
        turns: traced turns this version answered.
        rated: turns with a helpful or empathy rating (the count the rates are over).
        helpful_rate: share of helpful ratings that said helpful; None when there are none.
        mean_empathy: mean empathy (1..5); None when there are none.
    """

    model_version: str
    turns: int
    rated: int
    helpful_rate: float | None
    mean_empathy: float | None


# === Core (pure) ===


def latest_ratings(assessments: Iterable[tuple[str, Any, int]]) -> dict[str, Any]:
    """The newest value of each rating name on one trace (a reviewer who rates again replaces the rating).

    Args:
        assessments: (name, value, create_time_ms) of a trace's feedback entries.
    """
    newest: dict[str, tuple[int, Any]] = {}
    for name, value, created in assessments:
        if name in (HELPFUL, EMPATHY) and (name not in newest or created >= newest[name][0]):
            newest[name] = (created, value)
    return {name: value for name, (_, value) in newest.items()}


def summarise(turns: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, VersionFeedback]:
    """Per model version: turns, rated turns, helpful rate and mean empathy.

    Args:
        turns: (model_version, latest ratings of that turn) for every traced turn.
    """
    grouped: dict[str, list[dict[str, Any]]] = {}
    for version, ratings in turns:
        grouped.setdefault(version, []).append(ratings)
    summary = {}
    for version, ratings in sorted(grouped.items()):
        helpful = [bool(r[HELPFUL]) for r in ratings if r.get(HELPFUL) is not None]
        empathy = [float(r[EMPATHY]) for r in ratings if r.get(EMPATHY) is not None]
        summary[version] = VersionFeedback(
            model_version=version,
            turns=len(ratings),
            rated=sum(1 for r in ratings if r.get(HELPFUL) is not None or r.get(EMPATHY) is not None),
            helpful_rate=sum(helpful) / len(helpful) if helpful else None,
            mean_empathy=statistics.fmean(empathy) if empathy else None,
        )
    return summary


# === Edge: MLflow ===


def _store_exists(uri: str) -> bool:
    return not uri.startswith("sqlite:///") or Path(uri[len("sqlite:///") :]).exists()


def feedback_by_version(experiment: str, tracking_uri: str | None = None) -> dict[str, VersionFeedback]:
    """Summarises reviewers' ratings of served turns per model version, from the traces in MLflow.

    Args:
        experiment: the serve experiment's name (`serve_experiment(params.tracking)`).
        tracking_uri: the MLflow store; None: `maeum.tracking.tracking_uri()`.

    Returns:
        model version -> its `VersionFeedback`, sorted by version; empty when the store or the
        experiment does not exist (nothing was served yet). Never creates a store.
    """
    from mlflow import MlflowClient

    uri = tracking_uri or tracking.tracking_uri()
    if not _store_exists(uri):
        return {}
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return {}
    turns, token = [], None
    while True:
        page = client.search_traces(locations=[found.experiment_id], include_spans=False, max_results=TRACES_PAGE,
                                    page_token=token)  # fmt: skip
        for trace in page:
            version = trace.info.tags.get(TAG_MODEL_VERSION)
            if version is None:
                continue  # not a served turn
            ratings = latest_ratings((a.name, a.value, a.create_time_ms) for a in trace.info.assessments or ())
            turns.append((version, ratings))
        token = page.token
        if not token:
            return summarise(turns)


def log_rating(trace_id: str, helpful: bool | None, empathy: int | None, note: str | None,
               reviewer: str | None = None) -> list[str]:  # fmt: skip
    """Records a reviewer's rating of one served turn as MLflow feedback on its trace.

    Args:
        trace_id: the turn's trace (returned by the server with the reply).
        helpful: whether the reply helped; None: not rated.
        empathy: 1..5; None: not rated.
        note: free text, stored as the rationale of each entry.
        reviewer: who rated (the feedback's human source id).

    Returns:
        The names of the feedback entries written.
    """
    import mlflow
    from mlflow.entities import AssessmentSource, AssessmentSourceType

    source = AssessmentSource(source_type=AssessmentSourceType.HUMAN, source_id=reviewer or DEFAULT_REVIEWER)
    written = []
    for name, value in ((HELPFUL, helpful), (EMPATHY, empathy)):
        if value is not None:
            mlflow.log_feedback(trace_id=trace_id, name=name, value=value, source=source, rationale=note or None)
            written.append(name)
    return written
