"""The `train-lora` flow: the dvc.yaml pipeline through DVC, then register, re-score the champion, decide, promote.

A run first compares the raw data version and the parameters hash with those of the registered
`champion`; when both match it returns `{"status": "skipped", ...}` at once (unless `force`).
Otherwise every stage of dvc.yaml runs as a task, in DVC's order, through DVC (which reruns only the
stale ones; `force` reruns train and everything after it). The new model is registered; the
current champion is loaded from the registry and re-scored on *this* run's validation data; the
promotion rule (`maeum.promotion`) decides; `promotion.mode` says whether a passing model becomes
champion at once (auto) or waits as `challenger` for `maeum registry promote` (manual).

The flow runs in the repository (params.yaml, dvc.yaml, the data): what to train is what DVC
would run there. Try a setting with `dvc exp run -S train.lora_rank=8` (`train.tiny.lora_rank` for
the tiny preset, whose profile overrides it); change the schedule's training by committing params.yaml.

    python -m flows.train_lora                 # one run, here (ephemeral Prefect unless PREFECT_API_URL is set)
    python -m flows.train_lora --force
    python -m flows.train_lora --serve         # a long-running process with the weekly schedule
    prefect --no-prompt deploy --name default  # or: the deployment in prefect.yaml, run by a worker
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.schedules import Cron

from flows import stages
from maeum import promotion, tracking
from maeum.config import DEFAULT_PARAMS_FILE, load_params
from maeum.runtime import prepare_process

WEEKLY_CRON = "0 3 * * 1"  # Mondays 03:00, after the weekend's data drops; the same as in prefect.yaml
TIMEZONE = "Asia/Seoul"
SERVE_NAME = "serve"  # `train-lora/serve`; `train-lora/default` is the worker deployment in prefect.yaml
FORCE_FROM = "train"  # the dvc.yaml stage that `force` reruns, with every stage after it


@flow(name="train-lora", description="LoRA fine-tuning through the DVC pipeline; registered, compared with the re-scored "
                                     "champion on the same data, promoted only if every check passes.")  # fmt: skip
def train_lora(force: bool = False) -> dict[str, Any]:
    """Runs the pipeline and the registry steps unless the champion already has this data and these params.

    Args:
        force: train again even when the champion was trained on the same data and parameters.

    Returns:
        status ("trained", "skipped" or "registered already"), the reason, the stages, the MLflow run,
        the registered version, the promotion decision with every check, and the metrics.
    """
    logger = get_run_logger()
    params = load_params(DEFAULT_PARAMS_FILE)
    prepare_process(backend=params.train.backend)  # a worker's flow-run process starts here
    model_name = params.tracking.registered_model
    fingerprint = stages.fingerprint(params)
    champion = stages.find_champion(model_name)
    decision = promotion.decide_skip(champion, fingerprint.data_version, fingerprint.params_hash, force)
    outcome: dict[str, Any] = {"reason": decision.reason, "data_version": fingerprint.data_version,
                               "params_hash": fingerprint.params_hash, "tracking_uri": tracking.tracking_uri(),
                               "champion_version": champion.version if champion else None}  # fmt: skip
    if decision.skip:
        logger.info("skipped: %s (champion %s v%s, MLflow run %s)", decision.reason, model_name, champion.version, champion.run_id)
        outcome.update(status="skipped", run_id=champion.run_id)
        stages.report(outcome)
        return outcome
    logger.info("training: %s", decision.reason)

    forced = set(stages.downstream_of(FORCE_FROM)) if force else set()
    outcome["stages"] = [stages.run_stage(stage, force=stage in forced) for stage in stages.pipeline_stages()]
    outputs = stages.read_outputs(params)
    outcome.update(run_id=outputs.run["run_id"], metrics=outputs.metrics)
    from maeum import registry  # after the stages: MLflow's import is slow and skipped runs need none of it

    existing = registry.version_of_run(model_name, outputs.run["run_id"])
    if existing is not None:
        outcome.update(status="registered already", model_version=existing,
                       reason=f"{decision.reason}; DVC found nothing to retrain and run {outputs.run['run_id']} is v{existing}")  # fmt: skip
        stages.report(outcome)
        return outcome

    version, logged_in = stages.register(params, outputs, fingerprint)
    rescored = stages.rescore_champion(params, champion) if champion else None
    verdict = stages.decide(params, outputs, rescored)
    result = stages.apply_decision(params, outputs, fingerprint, version, logged_in, verdict, rescored, flow_run.id)
    outcome.update(
        status="trained", reason=f"{decision.reason}; {result}", model_version=version, promoted=result == "promoted",
        promotion_outcome=result, promotion=verdict.as_dict(),
        champion_version=version if result == "promoted" else (champion.version if champion else None),
        champion_data_version=rescored.measured.data_version if rescored else None,
        champion_rescore_seconds=round(rescored.seconds, 1) if rescored else None,
    )  # fmt: skip
    logger.info("MLflow run %s -> %s v%s: %s", outputs.run["run_id"], model_name, version, verdict.reason)
    stages.report(outcome)
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="train even if the champion has this data and these params")
    parser.add_argument("--serve", action="store_true", help=f"serve the flow with its weekly schedule ({WEEKLY_CRON} {TIMEZONE})")
    args = parser.parse_args(argv)
    prepare_process()
    if args.serve:
        train_lora.serve(name=SERVE_NAME, schedules=[Cron(WEEKLY_CRON, timezone=TIMEZONE)], parameters={"force": args.force})
        return 0
    print(json.dumps(train_lora(force=args.force), ensure_ascii=False, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
