"""evaluate stage: is the tuned model better than its base, and how does it answer?

On the validation split: response-token loss and perplexity of the base (LoRA off) and of the
tuned model (the last epoch's adapter); replies of both to a fixed set of validation prompts,
scored against the reference replies with chrF (sacrebleu) and for variety with distinct-1/2.
Writes DVC metrics and plots, a side-by-side report, and logs the numbers to the training's
MLflow run.

    python -m tasks.evaluate [--params params.yaml]
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from maeum import atomic, batching, gemma, tracking
from maeum.config import Params, TrainParams
from maeum.runtime import stage_params
from tasks.tokenize import TokenizedSplit
from tasks.train import RUN_FILE, boundaries_for

log = logging.getLogger(__name__)

LOSS_PLOT_FILE = "loss_per_epoch.json"
REPORT_FILE = "report.md"
EVAL_BATCH_SIZE = 8  # scoring needs no gradients, so batch wider than training when it is at 1


# === Core: scores ===


def distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams over all n-grams of whitespace tokens, across all texts (0 when there are none)."""
    total, unique = 0, set()
    for text in texts:
        tokens = text.split()
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


def chrf(hypotheses: list[str], references: list[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_chrf(hypotheses, [references]).score)


def response_loss(causal_lm: Any, split: TokenizedSplit, train: TrainParams) -> float:
    """Mean cross-entropy over the weighted (response) tokens of `split`, batched as training batches them."""
    import keras

    lengths = split.lengths - 1
    plans = batching.plan_batches(lengths, boundaries_for(train), max(train.batch_size, EVAL_BATCH_SIZE))
    # Summing per-token losses keeps this a true mean over tokens, not a mean of batch means.
    total, count = 0.0, 0.0
    for x, y, weights in batching.iterate_batches(split, plans):
        logits = causal_lm.predict_on_batch(x)
        per_token = keras.ops.convert_to_numpy(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
        total += float((per_token * weights).sum())
        count += float(weights.sum())
    return total / count


def compare_models(base: gemma.LoadedBase, adapter: Path, lora_rank: int, validation: TokenizedSplit,
                   references: list[str], params: Params) -> tuple[dict[str, float], list[dict[str, str]]]:  # fmt: skip
    """Scores the base, then loads the adapter into the same model and scores it again.

    Returns:
        The metrics and, per evaluated prompt, the prompt, reference, base and tuned reply.
    """
    evaluate, train = params.evaluate, params.train
    count = min(evaluate.num_generations, len(validation))
    prompts = [validation.prompt(i).tolist() for i in range(count)]
    generator = gemma.ReplyGenerator(base, prompt_budget=train.sequence_length, max_new_tokens=evaluate.max_new_tokens)
    base_loss = response_loss(base.causal_lm, validation, train)
    base_replies = generator.generate_text(prompts)

    base.causal_lm.backbone.enable_lora(rank=lora_rank)
    base.causal_lm.backbone.load_lora_weights(str(adapter))
    # The traced predict/generate functions were built before the LoRA variables existed.
    base.causal_lm.predict_function = None
    base.causal_lm.generate_function = None
    tuned_loss = response_loss(base.causal_lm, validation, train)
    tuned_replies = generator.generate_text(prompts)

    refs = references[:count]
    metrics = {
        "val_loss_base": base_loss,
        "val_loss_tuned": tuned_loss,
        "perplexity_base": math.exp(base_loss),
        "perplexity_tuned": math.exp(tuned_loss),
        "chrf": chrf(tuned_replies, refs),
        "chrf_base": chrf(base_replies, refs),
        "distinct_1": distinct_n(tuned_replies, 1),
        "distinct_2": distinct_n(tuned_replies, 2),
        "distinct_1_base": distinct_n(base_replies, 1),
        "distinct_2_base": distinct_n(base_replies, 2),
        "generations": count,
    }
    rows = [{"prompt": generator.detokenize(p), "reference": r, "base": b, "tuned": t}
            for p, r, b, t in zip(prompts, refs, base_replies, tuned_replies)]  # fmt: skip
    return metrics, rows


def safety_metrics(rules_path: Path, eval_path: Path) -> dict[str, float]:
    """How the crisis screen does on the project's crisis/safe set, so every run shows it.

    `heldout` holds messages the rules were never tuned on: the honest estimate for new wording.
    """
    from tasks import safety

    rules = safety.load_rules(rules_path)
    metrics = {}
    for section, prefix in ((safety.MAIN_SECTION, "safety"), (safety.HELDOUT_SECTION, "safety_heldout")):
        scores = safety.evaluate_screen(eval_path, rules, section=section)
        metrics[f"{prefix}_crisis_recall"] = scores["crisis_recall"]
        metrics[f"{prefix}_crisis_missed"] = scores["crisis_total"] - scores["crisis_detected"]
        metrics[f"{prefix}_false_positives"] = scores["false_positives"]
        metrics[f"{prefix}_harmful_replies_missed"] = scores["reply_harmful_total"] - scores["reply_harmful_detected"]
    return metrics


def markdown_report(metrics: dict[str, Any], rows: list[dict[str, str]], run: dict[str, Any]) -> str:
    lines = [
        "# maeum evaluation",
        "",
        f"MLflow run `{run.get('run_id')}` · preset `{run.get('preset')}` · LoRA rank {run.get('lora_rank')} · "
        f"data `{str(run.get('data_version'))[:12]}` · adapter `{run.get('last_adapter')}`",
        "",
        "| metric | base | tuned |",
        "|---|---|---|",
        f"| validation loss (response tokens) | {metrics['val_loss_base']:.4f} | {metrics['val_loss_tuned']:.4f} |",
        f"| perplexity | {metrics['perplexity_base']:.2f} | {metrics['perplexity_tuned']:.2f} |",
        f"| chrF | {metrics['chrf_base']:.2f} | {metrics['chrf']:.2f} |",
        f"| distinct-1 / distinct-2 | {metrics['distinct_1_base']:.3f} / {metrics['distinct_2_base']:.3f} | "
        f"{metrics['distinct_1']:.3f} / {metrics['distinct_2']:.3f} |",
        f"Crisis screen (data/safety): recall {metrics['safety_crisis_recall']:.2f} with "
        f"{metrics['safety_false_positives']} false positives on the project set; recall "
        f"{metrics['safety_heldout_crisis_recall']:.2f} on held-out wording it was not tuned on.",
        "",
        "## Replies side by side",
        "",
    ]
    for number, row in enumerate(rows, start=1):
        prompt = row["prompt"].replace("\n", "  \n")
        lines += [f"### {number}", "", "```", prompt, "```", "",
                  f"- **reference:** {row['reference']}", f"- **base:** {row['base'] or '(empty)'}",
                  f"- **tuned:** {row['tuned'] or '(empty)'}", ""]  # fmt: skip
    return "\n".join(lines)


# === Edge ===


def run(params: Params) -> dict[str, Any]:
    """The stage: metrics, plots and report files, and the same numbers in the training's MLflow run."""
    import mlflow
    import pandas as pd

    run = json.loads((params.train.out_dir / RUN_FILE).read_text(encoding="utf-8"))
    validation = TokenizedSplit.load(params.tokenize.out_dir / "validation.npz")
    references = pd.read_parquet(params.preprocess.out_dir / "validation.parquet", columns=["response_text"])["response_text"].tolist()
    base = gemma.load_base(params.model.base_dir, precision=params.train.precision)
    metrics, rows = compare_models(base, params.train.out_dir / run["last_adapter"], run["lora_rank"], validation, references, params)
    metrics.update(safety_metrics(params.evaluate.safety_rules, params.evaluate.safety_eval_set))
    log.info("metrics: %s", metrics)

    out = params.evaluate.out_dir
    loss_curve = [{"epoch": e["epoch"], "train_loss": e["train_loss"], "val_loss": e["val_loss"]} for e in run["epochs"]]
    report = markdown_report(metrics, rows, run)
    atomic.write_json(out / LOSS_PLOT_FILE, loss_curve)
    atomic.write_text(out / REPORT_FILE, report)
    atomic.write_json(params.evaluate.metrics_file, metrics)

    tracking.setup(params.tracking.experiment)
    with mlflow.start_run(run_id=run["run_id"]):
        mlflow.log_metrics(tracking.plain_metrics(metrics))
        mlflow.log_text(report, "evaluation/report.md")
        mlflow.log_table(pd.DataFrame(rows), "evaluation/replies.json")
    return metrics


def main(argv: list[str] | None = None) -> int:
    params = stage_params(__doc__, argv)
    metrics = run(params)
    print(f"evaluate: val_loss base {metrics['val_loss_base']:.4f} -> tuned {metrics['val_loss_tuned']:.4f}, chrF {metrics['chrf']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
