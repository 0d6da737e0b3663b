"""The `train-lora` flow: validate -> preprocess -> model -> tokenize -> train -> evaluate -> register/promote.

The same stage functions `dvc repro` runs, as Prefect tasks (flows/stages.py), with retries,
input-hash caching of the data stages, a weekly schedule and a registry step DVC does not have.
A run first compares the raw data version and the parameters hash with those of the registered
`champion`; when both match it returns `{"status": "skipped", ...}` at once (unless `force`).

    python -m flows.train_lora                 # one run, here (ephemeral Prefect unless PREFECT_API_URL is set)
    python -m flows.train_lora --epochs 1 --force
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
from maeum import registry, tracking
from maeum.config import load_params
from maeum.runtime import prepare_process

WEEKLY_CRON = "0 3 * * 1"  # Mondays 03:00, after the weekend's data drops; the same as in prefect.yaml
TIMEZONE = "Asia/Seoul"
SERVE_NAME = "serve"  # `train-lora/serve`; `train-lora/default` is the worker deployment in prefect.yaml


def overrides(data_dir: str | None, epochs: int | None, lora_rank: int | None) -> dict[str, Any]:
    """Flow parameters as params.yaml overrides; None keeps the file's value."""
    values = {"data.raw_dir": data_dir, "train.epochs": epochs, "train.lora_rank": lora_rank}
    return {key: value for key, value in values.items() if value is not None}


@flow(name="train-lora", description="LoRA fine-tuning of the base on the corpus, evaluated, registered and promoted if better.")
def train_lora(
    params_file: str = "params.yaml",
    data_dir: str | None = None,
    epochs: int | None = None,
    lora_rank: int | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Trains, evaluates and registers a LoRA adapter unless the champion already has this data and these params.

    Args:
        params_file: the parameters file, relative to the working directory.
        data_dir: folder with Training.json and Validation.json (overrides data.raw_dir).
        epochs: overrides train.epochs.
        lora_rank: overrides train.lora_rank.
        force: train even when the champion was trained on the same data and parameters.

    Returns:
        status ("trained" or "skipped"), the reason, MLflow run id, registered version, metrics and
        the promotion decision.
    """
    logger = get_run_logger()
    params = load_params(params_file, overrides(data_dir, epochs, lora_rank))
    prepare_process(backend=params.train.backend)  # a worker's flow-run process starts here, before Keras is imported
    model_name = params.tracking.registered_model
    fingerprint = stages.fingerprint(params)
    champion = stages.find_champion(model_name)
    decision = registry.decide_skip(champion, fingerprint.data_version, fingerprint.params_hash, force)
    outcome: dict[str, Any] = {"reason": decision.reason, "data_version": fingerprint.data_version,
                               "params_hash": fingerprint.params_hash, "tracking_uri": tracking.tracking_uri(),
                               "champion_version": champion.version if champion else None}  # fmt: skip
    if decision.skip:
        logger.info("skipped: %s (champion %s v%s, MLflow run %s)", decision.reason, model_name, champion.version, champion.run_id)
        outcome.update(status="skipped", run_id=champion.run_id)
        stages.report(outcome)
        return outcome
    logger.info("training: %s", decision.reason)

    stages.validate(params)
    inputs = stages.stage_inputs(params, fingerprint.data_version)
    for stage_task in (stages.preprocess, stages.model, stages.tokenize):
        stages.run_data_stage(stage_task, params, inputs)
    trained = stages.train(params, flow_run.id)
    metrics = stages.evaluate(params)
    version = stages.register(params, trained.run_id, trained.last_adapter, fingerprint, metrics["val_loss_tuned"])
    promotion = stages.promote(params, version, trained.run_id, metrics["val_loss_tuned"])

    outcome.update(
        status="trained", reason=f"{decision.reason}; {'promoted' if promotion.promote else 'not promoted'}",
        run_id=trained.run_id, model_version=version, promoted=promotion.promote,
        champion_version=version if promotion.promote else promotion.champion_version,
        promotion=vars(promotion), metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
    )  # fmt: skip
    logger.info("MLflow run %s -> %s v%s; %s", trained.run_id, model_name, version, promotion.reason)
    stages.report(outcome)
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params-file", default="params.yaml")
    parser.add_argument("--data-dir", default=None, help="overrides data.raw_dir")
    parser.add_argument("--epochs", type=int, default=None, help="overrides train.epochs")
    parser.add_argument("--lora-rank", type=int, default=None, help="overrides train.lora_rank")
    parser.add_argument("--force", action="store_true", help="train even if the champion has this data and these params")
    parser.add_argument("--serve", action="store_true", help=f"serve the flow with its weekly schedule ({WEEKLY_CRON} {TIMEZONE})")
    args = parser.parse_args(argv)
    prepare_process()
    parameters = {"params_file": args.params_file, "data_dir": args.data_dir, "epochs": args.epochs,
                  "lora_rank": args.lora_rank, "force": args.force}  # fmt: skip
    if args.serve:
        train_lora.serve(name=SERVE_NAME, schedules=[Cron(WEEKLY_CRON, timezone=TIMEZONE)], parameters=parameters)
        return 0
    print(json.dumps(train_lora(**parameters), ensure_ascii=False, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
