"""evaluate stage: is the tuned model better than its base, how does it answer, and how safe is the screen it ships with?

On the validation split, for the base (LoRA off) and the tuned model (the training's adapter):

- how well each predicts the reference replies: response-token loss, perplexity and bits per
  character (tokenizer-independent, so a champion with another tokenizer can be compared);
- replies to `evaluate.num_generations` validation prompts spread over the emotion groups, scored for empathetic
  dialogue (`maeum.scorecard.generation_metrics`): chrF, morpheme distinct-1/2, repetition, length
  against the reference, exploration (asking the speaker), emotion reflection per emotion group
  (`maeum.emotion`), and whether replies end their turn and start as whole words;
- the crisis screen of `safety:` on the held-out messages: recall per crisis category, false
  positives per safe category at both levels, and on the held-out model replies; and how often it
  would answer the validation corpus's own (ordinary) conversations instead of the model.

Writes three DVC metrics files (model, replies per emotion group, safety), per-example scores for
promotion's bootstrap, a side-by-side report, the loss curve, and the same numbers in the training's
MLflow run (or, when that run is not in this store, in a new run linked to it).

    python -m tasks.evaluate [--params params.yaml]
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from maeum import atomic, gemma, tracking
from maeum.config import Params
from maeum.emotion import EmotionClassifier
from maeum.runtime import stage_params
from maeum.safety import Screen, evaluation
from maeum.scorecard import Scorecard, score_model

log = logging.getLogger(__name__)

MODELS = ("base", "tuned")
HEADLINE = ("val_loss", "val_bpc", "perplexity", "chrf", "emotion_reflection", "end_of_turn_rate", "distinct_2",
            "exploration_rate")  # fmt: skip
REPORT_ARTIFACT = "evaluation"  # folder in the MLflow run
TAG_TRAINING_RUN = "maeum.training_run_id"  # on an evaluation run created because the training run is elsewhere


# === Core ===


def model_metrics(cards: dict[str, Scorecard]) -> dict[str, float]:
    """`<metric>_<model>` for every model's numbers."""
    return {f"{name}_{model}": value for model, card in cards.items() for name, value in card.metrics.items()}


def markdown_report(values: dict[str, float], cards: dict[str, Scorecard], run: dict[str, Any], safety_report: dict[str, Any],
                    references: list[str], replaced: list[bool]) -> str:  # fmt: skip
    lines = [
        "# maeum evaluation", "",
        f"MLflow run `{run.get('run_id')}` · preset `{run.get('preset')}` · LoRA rank {run.get('lora_rank')} "
        f"({run.get('lora_targets', 'query_value')}) · data `{str(run.get('data_version'))[:12]}` · adapter `{run.get('adapter')}`",
        "", "| metric | base | tuned |", "|---|---|---|",
    ]  # fmt: skip
    for name in ("val_loss", "perplexity", "val_bpc", "chrf", "distinct_1", "distinct_2", "repetition_rate", "length_ratio",
                 "exploration_rate", "emotion_reflection", "end_of_turn_rate", "mid_word_start_rate", "replacement_char_rate"):  # fmt: skip
        lines.append(f"| {name} | {values[f'{name}_base']:.4f} | {values[f'{name}_tuned']:.4f} |")
    overall = safety_report["overall"]
    lines += ["", f"Crisis screen on the held-out set ({overall['crisis_total']} crisis, {overall['safe_total']} safe messages): "
              f"recall {overall['crisis_recall']:.3f} (lowest category {overall['min_category_recall']:.3f}); safe messages "
              f"as crisis {overall['safe_crisis_rate']:.3f}, as check_in or crisis {overall['safe_flagged_rate']:.3f}. "
              "Per category: `safety.json`.", "", "## Replies side by side", ""]  # fmt: skip
    for number, (prompt, reference, base, tuned, swapped) in enumerate(
            zip(cards["tuned"].prompts, references, cards["base"].replies, cards["tuned"].replies, replaced), start=1):  # fmt: skip
        lines += [f"### {number}", "", "```", prompt.replace("```", "'''"), "```", "", f"- **reference:** {reference}",
                  f"- **base:** {base or '(empty)'}", f"- **tuned:** {tuned or '(empty)'}"
                  + (" *(replaced by the reply screen in chat)*" if swapped else ""), ""]  # fmt: skip
    return "\n".join(lines)


# === Edge ===


def tracking_run(run_id: str, experiment: str) -> tuple[str, str | None]:
    """The MLflow run to log into: the training's, or a new one linked to it when this store does not have it.

    Returns:
        (run id to log into, the training run id when a new run was created, else None).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    tracking.setup(experiment)
    try:
        mlflow.MlflowClient(tracking.tracking_uri()).get_run(run_id)
        return run_id, None
    except MlflowException:
        log.warning("training run %s is not in the MLflow store %s (trained elsewhere or the store was reset): "
                    "logging the evaluation to a new run tagged %s=%s", run_id, tracking.tracking_uri(), TAG_TRAINING_RUN, run_id)  # fmt: skip
        with mlflow.start_run(run_name=f"evaluate-{run_id[:8]}", tags={TAG_TRAINING_RUN: run_id}) as created:
            return created.info.run_id, run_id


def run(params: Params) -> dict[str, Any]:
    """The stage: metrics, plots, per-example scores and report files, and the same numbers in MLflow."""
    import mlflow

    record = json.loads(params.train.run_file.read_text(encoding="utf-8"))
    examples = pd.read_parquet(params.preprocess.split_path("validation"))
    emotion = EmotionClassifier.load(params.emotion.model_dir)
    screen = Screen.load(params.safety)
    evaluate, train = params.evaluate, params.train
    model = gemma.load_base(params.model.base_dir, precision=train.precision)

    cards = {"base": score_model(model, examples, train.sequence_length, None, evaluate.num_generations,
                                 evaluate.max_new_tokens, emotion, "base")}  # fmt: skip
    gemma.load_lora(model.causal_lm, params.train.out_dir / record["adapter"])
    cards["tuned"] = score_model(model, examples, train.sequence_length, None, evaluate.num_generations,
                                 evaluate.max_new_tokens, emotion, "tuned")  # fmt: skip
    values = model_metrics(cards)
    tuned = cards["tuned"]
    user_turns = examples["user_text"].astype(str).iloc[tuned.rows].tolist()
    replaced = [screen.screen_reply(reply, quiet=screen.quiet(screen.assess(user))).harmful
                for reply, user in zip(tuned.replies, user_turns)]  # fmt: skip
    values["replies_replaced_tuned"] = float(sum(replaced))
    safety_values, safety_report = evaluation.screen_report(screen, evaluation.read_examples(params.safety.heldout_file),
                                                  evaluation.read_examples(params.safety.replies_heldout_file,
                                                                           evaluation.REPLY_LABELS))  # fmt: skip
    # The corpus's own conversations, turn by turn with their history: how often the screen would stop ordinary talk.
    levels = evaluation.conversation_levels(screen, evaluation.dialogue_turns(examples))
    turns = max(sum(levels.values()), 1)
    safety_values["safety_corpus_flagged_rate"] = (levels["check_in"] + levels["crisis"]) / turns
    safety_values["safety_corpus_crisis_rate"] = levels["crisis"] / turns
    headline = {f"{name}_{model_name}": values[f"{name}_{model_name}"] for name in HEADLINE for model_name in MODELS}
    generation = {key: value for key, value in values.items() if key not in headline}
    log.info("base -> tuned: %s", ", ".join(f"{n} {values[f'{n}_base']:.3f} -> {values[f'{n}_tuned']:.3f}" for n in HEADLINE))

    references = examples["response_text"].astype(str).tolist()
    rows = cards["tuned"].rows
    report = markdown_report(values, cards, record, safety_report, [references[i] for i in rows], replaced)
    per_example = pd.DataFrame({"talk_id": cards["tuned"].talk_ids, "characters": cards["tuned"].characters,
                                "tokens": cards["tuned"].scores.tokens, "nll_base": cards["base"].scores.nll,
                                "nll_tuned": cards["tuned"].scores.nll, "reference": references,
                                "prompt": "", "reply_base": "", "reply_tuned": ""})  # fmt: skip
    for column, values_ in (("prompt", cards["tuned"].prompts), ("reply_base", cards["base"].replies),
                            ("reply_tuned", cards["tuned"].replies)):  # fmt: skip
        per_example.loc[rows, column] = values_
    loss_curve = [{"epoch": e["epoch"], "train_loss": e["train_loss"], "val_loss": e["val_loss"]} for e in record["epochs"]]
    atomic.write_json(evaluate.loss_plot_file, loss_curve)
    atomic.write_text(evaluate.report_file, report)
    with atomic.atomic_path(evaluate.examples_file) as tmp:
        per_example.to_parquet(tmp, index=False)
    atomic.write_json(evaluate.generation_file, generation)
    atomic.write_json(evaluate.safety_file, {**safety_values, "report": safety_report})
    atomic.write_json(evaluate.metrics_file, headline)

    run_id, training_run = tracking_run(record["run_id"], params.tracking.experiment)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(tracking.plain_metrics({**values, **safety_values}))
        mlflow.log_text(report, f"{REPORT_ARTIFACT}/report.md")
        mlflow.log_dict(safety_report, f"{REPORT_ARTIFACT}/safety.json")
        mlflow.log_table(pd.DataFrame({"prompt": cards["tuned"].prompts, "reference": [references[i] for i in rows],
                                       "base": cards["base"].replies, "tuned": cards["tuned"].replies}),
                         f"{REPORT_ARTIFACT}/replies.json")  # fmt: skip
        if training_run:
            mlflow.log_dict(record, f"{REPORT_ARTIFACT}/training_run.json")
    return {**values, **safety_values, "mlflow_run_id": run_id}


def main(argv: list[str] | None = None) -> int:
    params = stage_params(__doc__, argv)
    values = run(params)
    print("evaluate: " + ", ".join(f"{n} {values[f'{n}_base']:.3f} -> {values[f'{n}_tuned']:.3f}" for n in HEADLINE[:5]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
