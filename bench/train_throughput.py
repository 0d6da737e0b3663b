"""Training throughput: the original recipe (pad to 256, batch 1) against the project's default path.

Same model shape and weights, same examples, same machine, backend and compile settings in one
process. The recipe is keras-hub's `GemmaCausalLM` as the notebook trains it (logits at every
position); the default path is the train stage's (`lora_training_model`: logits only at the loss
positions). The effects of XLA and of step checkpoints are measured separately, on the default path.

    python bench/train_throughput.py --quick                 # CPU, a few minutes (each bucket shape compiles once)
    python bench/train_throughput.py                         # CPU, more examples
    KERAS_BACKEND=jax python bench/train_throughput.py --shape gemma2-2b --precision bfloat16   # GPU

The default path is params.yaml's `train:` as the 2B recipe reads it (not the tiny preset's
`train.tiny` overrides), through the train stage's own `boundaries_for`, `epoch_plan`,
`lora_training_model` and `training_batches`. bench/peer_throughput.py compares the same path with
the Hugging Face stack.

Checkpoint overhead: one more pass over the default path's batches saves a step checkpoint
(`save_step_checkpoint`, LoRA + optimizer state) after every step, timing steps and saves apart;
the overhead per step at `checkpoint_every_steps: N` is then save time / (N x step time).

The last output line is one JSON object. Examples are the sample corpus's real dialogue turns,
tokenized with a SentencePiece model trained on it; model weights are random (no download).

FLOPs: a LoRA step runs the frozen model forward (2·N per token) and backward through the
activations (2·N per token); the frozen weights need no weight gradients, so we count
4·N·tokens, N = the model's own parameters (LoRA's are ~0.06% more), over useful (non-pad) tokens. 6·N·tokens, the usual full
fine-tuning count, is an upper bound and is reported beside it. Attention's own FLOPs are
left out of both.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from maeum.runtime import prepare_process  # noqa: E402

SHAPES = {
    # params.yaml's tiny preset: seconds per shape even on 2 cores (smoke tests of the GPU path).
    "tiny": dict(num_layers=2, hidden_dim=64, intermediate_dim=128, num_query_heads=4, num_key_value_heads=2,
                 head_dim=16, sliding_window_size=128),
    # A small Gemma2-shaped model that trains at a measurable rate on 2 CPU cores.
    "cpu-small": dict(num_layers=4, hidden_dim=256, intermediate_dim=1024, num_query_heads=4, num_key_value_heads=2,
                      head_dim=64, sliding_window_size=4096),
    # Gemma2 2B (2,614,341,888 parameters with its 256,000-piece vocabulary).
    "gemma2-2b": dict(num_layers=26, hidden_dim=2304, intermediate_dim=18432, num_query_heads=8, num_key_value_heads=4,
                      head_dim=256, sliding_window_size=4096, vocabulary_size=256000),
}  # fmt: skip
GEMMA2 = dict(query_head_dim_normalize=True, use_post_ffw_norm=True, use_post_attention_norm=True,
              attention_logit_soft_cap=50.0, final_logit_soft_cap=30.0, use_sliding_window_attention=True)  # fmt: skip
# Any preset but tiny: params.yaml's `train:` as the 2B recipe trains, without the `train.tiny` overrides.
RECIPE_PRESET = "gemma2_instruct_2b_en"
QUICK_EXAMPLES, FULL_EXAMPLES = 96, 512


def recipe_params():
    """params.yaml as the Gemma2 2B recipe reads it (its `train:` section without `train.tiny`)."""
    from maeum.config import load_params

    return load_params(REPO / "params.yaml", overrides={"model.preset": RECIPE_PRESET})


def realistic_examples(count: int, seed: int):
    """Tokenized turns of the sample corpus (real prompt/response lengths), the tokenizer's size, the 2B `train` params."""
    import keras_hub

    from maeum import gemma
    from maeum.corpus import dialogues_frame, read_corpus_file
    from maeum.tokenized import tokenize_examples
    from tasks.preprocess import build_examples

    params = recipe_params()
    path = REPO / params.data.raw_dir / params.data.train_file
    examples = build_examples(dialogues_frame(read_corpus_file(path), str(path)), params.preprocess.max_history_turns)
    tokenizer = keras_hub.models.GemmaTokenizer(
        proto=gemma.train_tokenizer_proto((examples["prompt"] + examples["response"]).tolist(), params.model.tiny.vocabulary_size)
    )
    chosen = examples.sample(n=min(count, len(examples)), random_state=seed).reset_index(drop=True)
    split, _ = tokenize_examples(chosen, tokenizer, params.train.sequence_length, params.train.loss_on)
    return split, tokenizer.vocabulary_size(), params.train


def aihub_like(split, count: int, seed: int, sequence_length: int):
    """Examples with the real corpus's length profile, built from real sample-corpus examples.

    With Gemma's own tokenizer the AI Hub dialogues run ~75 tokens on average, p99 ~130
    (STACK-NOTES); the tiny tokenizer on our longer synthetic turns gives ~130. Lengths are drawn
    from a lognormal with that mean and p99 (sigma 0.25); each example keeps its real prompt/response
    share, its ids are the real example's ids cut or repeated to the drawn length.
    """
    from maeum.tokenized import TokenizedSplit

    rng = np.random.default_rng(seed)
    sigma = 0.25
    mu = np.log(75) - sigma**2 / 2
    lengths = np.clip(np.round(rng.lognormal(mu, sigma, size=count)), 16, sequence_length + 1).astype(int)
    ids, weights, offsets, prompts = [], [], [0], []
    for row, length in enumerate(lengths):
        source_ids, source_weights = split.example(row % len(split))
        response_share = float(source_weights.mean())
        prompt = max(1, int(round(length * (1 - response_share))))
        ids.append(np.resize(source_ids, length))
        weights.append(np.concatenate([np.zeros(prompt, "float32"), np.ones(length - prompt, "float32")]))
        offsets.append(offsets[-1] + length)
        prompts.append(prompt)
    return TokenizedSplit(ids=np.concatenate(ids), weights=np.concatenate(weights), offsets=np.asarray(offsets, "int64"),
                          prompt_lengths=np.asarray(prompts, "int32"), talk_ids=split.talk_ids[:0], turns=split.turns[:0])  # fmt: skip


def gemma2_backbone(shape: str, vocabulary_size: int, precision: str = "float32"):
    """A Gemma2-shaped `GemmaBackbone` of `SHAPES[shape]` with random weights (seed 0)."""
    import keras
    import keras_hub

    config = dict(SHAPES[shape])
    config.setdefault("vocabulary_size", vocabulary_size)
    if precision != "float32":
        keras.config.set_dtype_policy(precision)
    keras.utils.set_random_seed(0)
    return keras_hub.models.GemmaBackbone(**GEMMA2, **config)


def build_model(shape: str, vocabulary_size: int, precision: str, train, total_steps: int, jit_compile: bool,
                full_logits: bool = False):  # fmt: skip
    """The train stage's training model (`lora_training_model`) on a fresh backbone of `shape`.

    `full_logits`: keras-hub's `GemmaCausalLM` itself instead, compiled by the same `compile_for_lora`
    (LoRA, AdamW, response-token loss), projecting every position onto the vocabulary.
    """
    import keras_hub

    from tasks.train import compile_for_lora, lora_training_model

    train = dataclasses.replace(train, jit_compile=jit_compile)
    causal_lm = keras_hub.models.GemmaCausalLM(backbone=gemma2_backbone(shape, vocabulary_size, precision), preprocessor=None)
    if not full_logits:
        return lora_training_model(causal_lm, train, total_steps)
    compile_for_lora(causal_lm, train, total_steps)
    return causal_lm


def parameter_counts(backbone: Any) -> dict[str, int]:
    """The model's own parameters and the LoRA ones (after `enable_lora`, only LoRA factors are trainable)."""
    lora = int(sum(np.prod(v.shape) for v in backbone.trainable_weights))
    return {"parameters": int(backbone.count_params()) - lora, "lora_parameters": lora}


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from a parent across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_device_memory_mib() -> float | None:
    import keras

    try:
        if keras.config.backend() == "jax":
            import jax

            stats = jax.devices()[0].memory_stats() or {}
            return stats.get("peak_bytes_in_use", 0) / 2**20 or None
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    except Exception:  # memory statistics are best effort and differ per backend/device
        return None
    return None


def planned_batches(split, plans: list, full_logits: bool = False) -> list[tuple]:
    """`(x, y, weights)` of each plan as `build_model(..., full_logits)` takes them (the train stage's `training_batches`)."""
    from maeum import batching, loss_positions
    from tasks.train import training_batches

    if full_logits:
        return list(batching.iterate_batches(split, plans))
    return list(training_batches(split, plans, loss_positions.counts_per_bucket(split, sorted({p.length for p in plans}))))


def warm_up(model: Any, split, plans: list, full_logits: bool = False) -> float:
    """One `train_on_batch` per distinct shape of `plans` (each compiles once); returns the seconds it took."""
    started = time.perf_counter()
    for length in sorted({p.length for p in plans}):
        x, y, weights = planned_batches(split, [next(p for p in plans if p.length == length)], full_logits)[0]
        model.train_on_batch(x, y, sample_weight=weights)
    return time.perf_counter() - started


def time_path(model: Any, split, plans: list, full_logits: bool = False) -> dict:
    """Compiles every shape of `plans` once (timed apart), then times one pass over them, one `train_on_batch` each.

    Args:
        model: a model from `build_model`.
        split: the examples (`TokenizedSplit`).
        plans: the batches, in training order (`tasks.train.epoch_plan`).
        full_logits: what `build_model` was given.
    """
    from maeum import batching

    compile_seconds = warm_up(model, split, plans, full_logits)
    batches = planned_batches(split, plans, full_logits)
    started = time.perf_counter()
    for x, y, weights in batches:
        model.train_on_batch(x, y, sample_weight=weights)
    seconds = time.perf_counter() - started
    stats = batching.padding_stats(split.lengths - 1, plans)
    return {
        "steps": len(plans),
        "seconds": round(seconds, 3),
        "compile_seconds": round(compile_seconds, 2),
        "shapes": len({p.length for p in plans}),
        "useful_tokens_per_s": round(stats["useful_tokens"] / seconds, 1),
        "positions_per_s": round(stats["positions"] / seconds, 1),
        "steps_per_s": round(len(plans) / seconds, 3),
        "pad_fraction": round(stats["pad_fraction"], 4),
        "useful_tokens": stats["useful_tokens"],
        "peak_rss_mib_so_far": round(peak_rss_mib(), 1),
    }


def time_checkpoints(model: Any, split, plans: list, every_steps: int) -> dict:
    """One pass over `plans` (already compiled) with a step checkpoint after every step, steps and saves timed apart.

    Returns:
        Mean seconds per step and per save, and the overhead per step (save / (N x step)) at N = 1
        and at `every_steps` (params.yaml's `train.checkpoint_every_steps`).
    """
    import tempfile

    from tasks.train import LoopState, save_step_checkpoint

    step_seconds, save_seconds = [], []
    with tempfile.TemporaryDirectory(prefix="checkpoint-bench-") as folder:
        path = Path(folder) / "step.npz"
        for step, (x, y, weights) in enumerate(planned_batches(split, plans), start=1):
            started = time.perf_counter()
            model.train_on_batch(x, y, sample_weight=weights)
            saving = time.perf_counter()
            save_step_checkpoint(model, LoopState(global_step=step, step_in_epoch=step), path)
            step_seconds.append(saving - started)
            save_seconds.append(time.perf_counter() - saving)
        size = path.stat().st_size
    step, save = float(np.mean(step_seconds)), float(np.mean(save_seconds))
    return {
        "checkpoint_seconds": round(save, 5),
        "checkpoint_bytes": size,
        "step_seconds": round(step, 5),
        "checkpoint_overhead_every_step": round(save / step, 4),
        f"checkpoint_overhead_every_{every_steps}_steps": round(save / (every_steps * step), 5),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EXAMPLES} examples (about a minute on 2 CPU cores)")
    parser.add_argument("--examples", type=int, help=f"examples per path (default {FULL_EXAMPLES})")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="cpu-small")
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "mixed_bfloat16"])
    parser.add_argument("--no-xla-comparison", action="store_true", help="skip timing the default path without XLA")
    parser.add_argument("--no-checkpoint-overhead", action="store_true", help="skip timing step checkpoints")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak for MFU (e.g. 989 for H100 bf16 dense)")
    parser.add_argument("--boundaries", type=int, nargs="+", help="buckets of the default path (default: params.yaml's best "
                        "`train.bucket_count` lengths for these examples)")
    parser.add_argument("--batch-size", type=int, help="batch size of the default path (default: params.yaml)")
    parser.add_argument("--lengths", choices=["aihub", "corpus"], default="aihub",
                        help="aihub: the real corpus's length profile (default); corpus: the synthetic sample as tokenized here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    prepare_process()
    import keras

    from tasks.train import boundaries_for, epoch_plan

    count = args.examples or (QUICK_EXAMPLES if args.quick else FULL_EXAMPLES)
    split, vocabulary_size, train = realistic_examples(count, args.seed)
    if args.lengths == "aihub":
        split = aihub_like(split, count, args.seed, train.sequence_length)
    lengths = split.lengths
    ours_train = dataclasses.replace(train, **({"bucket_boundaries": tuple(args.boundaries)} if args.boundaries else {}),
                                     **({"batch_size": args.batch_size} if args.batch_size else {}))  # fmt: skip
    recipe_train = dataclasses.replace(train, padding="fixed", batch_size=1)  # the original notebook
    plans = {name: epoch_plan(lengths - 1, boundaries_for(t, lengths - 1), t, 0)
             for name, t in (("recipe", recipe_train), ("default", ours_train))}  # fmt: skip
    default = {"boundaries": boundaries_for(ours_train, lengths - 1), "batch_size": ours_train.batch_size}
    jit = train.jit_compile
    notebook = build_model(args.shape, vocabulary_size, args.precision, train, len(plans["recipe"]), jit, full_logits=True)
    model = build_model(args.shape, vocabulary_size, args.precision, train, len(plans["default"]), jit)
    counts = parameter_counts(model.backbone)
    parameters = counts["parameters"]
    print(f"model {args.shape}: {parameters:,} parameters (+{counts['lora_parameters']:,} LoRA); {len(split)} examples ({args.lengths} lengths: mean "
          f"{lengths.mean():.0f}, p99 {np.percentile(lengths, 99):.0f}); backend {keras.config.backend()}; "
          f"precision {args.precision}; jit_compile {jit}; LoRA rank {train.lora_rank} on {train.lora_targets}", flush=True)  # fmt: skip

    recipe = time_path(notebook, split, plans["recipe"], full_logits=True)
    print(f"recipe  (fixed 256, batch 1, all logits): {recipe}", flush=True)
    ours = time_path(model, split, plans["default"])
    print(f"default (buckets {default['boundaries']}, batch {default['batch_size']}): {ours}", flush=True)

    result = {
        "shape": args.shape,
        "parameters": parameters,
        "lora_parameters": counts["lora_parameters"],
        "backend": keras.config.backend(),
        "precision": args.precision,
        "jit_compile": jit,
        "examples": len(split),
        "lengths": args.lengths,
        "length_mean": round(float(lengths.mean()), 1),
        "length_p99": float(np.percentile(lengths, 99)),
        "default_path": default,
        "useful_tokens_per_s_recipe": recipe["useful_tokens_per_s"],
        "useful_tokens_per_s_default": ours["useful_tokens_per_s"],
        "speedup": round(ours["useful_tokens_per_s"] / recipe["useful_tokens_per_s"], 2),
        "pad_fraction_recipe": recipe["pad_fraction"],
        "pad_fraction_default": ours["pad_fraction"],
        "steps_per_s_recipe": recipe["steps_per_s"],
        "steps_per_s_default": ours["steps_per_s"],
        "compile_seconds_recipe": recipe["compile_seconds"],
        "compile_seconds_default": ours["compile_seconds"],
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "peak_device_memory_mib": peak_device_memory_mib(),
        "flops_per_useful_token_4n": 4 * parameters,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
    }
    for name, measured in (("recipe", recipe), ("default", ours)):
        result[f"model_tflops_4n_{name}"] = round(4 * parameters * measured["useful_tokens_per_s"] / 1e12, 4)
        result[f"model_tflops_6n_upper_{name}"] = round(6 * parameters * measured["useful_tokens_per_s"] / 1e12, 4)
        if args.peak_tflops:
            result[f"mfu_4n_{name}"] = round(result[f"model_tflops_4n_{name}"] / args.peak_tflops, 4)

    if not args.no_checkpoint_overhead:
        checkpoints = time_checkpoints(model, split, plans["default"], train.checkpoint_every_steps)
        print(f"default with a step checkpoint after every step: {checkpoints}", flush=True)
        result.update(checkpoints)
    if jit and not args.no_xla_comparison and keras.config.backend() == "tensorflow":
        without_xla = build_model(args.shape, vocabulary_size, args.precision, train, len(plans["default"]), jit_compile=False)
        plain = time_path(without_xla, split, plans["default"])
        print(f"default without XLA: {plain}", flush=True)
        result["useful_tokens_per_s_default_no_xla"] = plain["useful_tokens_per_s"]
        result["xla_speedup"] = round(ours["useful_tokens_per_s"] / plain["useful_tokens_per_s"], 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
