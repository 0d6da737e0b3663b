"""Training throughput: the original recipe (pad to 256, batch 1) against the project's default path.

Same model, same examples, same machine, backend and compile settings in one process; only the
data path differs, so the ratio measures the data path. The effects of XLA and of precision are
measured separately, on the default path.

    python bench/train_throughput.py --quick                 # CPU, about a minute
    python bench/train_throughput.py                         # CPU, more examples
    KERAS_BACKEND=jax python bench/train_throughput.py --shape gemma2-2b --precision bfloat16   # GPU

The last output line is one JSON object. Examples are the sample corpus's real dialogue turns,
tokenized with a SentencePiece model trained on it; model weights are random (no download).

FLOPs: a LoRA step runs the frozen model forward (2·N per token) and backward through the
activations (2·N per token); the frozen weights need no weight gradients, so we count
4·N·tokens, N = all parameters, over useful (non-pad) tokens. 6·N·tokens, the usual full
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from maeum.runtime import prepare_process  # noqa: E402

SHAPES = {
    # A small Gemma2-shaped model that trains at a measurable rate on 2 CPU cores.
    "cpu-small": dict(num_layers=4, hidden_dim=256, intermediate_dim=1024, num_query_heads=4, num_key_value_heads=2,
                      head_dim=64, sliding_window_size=4096),
    # Gemma2 2B (2,614,341,888 parameters with its 256,000-piece vocabulary).
    "gemma2-2b": dict(num_layers=26, hidden_dim=2304, intermediate_dim=18432, num_query_heads=8, num_key_value_heads=4,
                      head_dim=256, sliding_window_size=4096, vocabulary_size=256000),
}  # fmt: skip
RECIPE = {"boundaries": [256], "batch_size": 1}
QUICK_EXAMPLES, FULL_EXAMPLES = 96, 512


def realistic_examples(count: int, seed: int):
    """Tokenized turns of the sample corpus (real prompt/response lengths), and the tokenizer's size."""
    import keras_hub

    from maeum import gemma
    from maeum.config import load_params
    from maeum.corpus import dialogues_frame, read_corpus_file
    from tasks.preprocess import build_examples
    from tasks.tokenize import tokenize_examples

    params = load_params(REPO / "params.yaml")
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
    from tasks.tokenize import TokenizedSplit

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


def build_model(shape: str, vocabulary_size: int, precision: str, train, jit_compile: bool):
    import keras
    import keras_hub

    from tasks.train import compile_for_lora

    config = dict(SHAPES[shape])
    config.setdefault("vocabulary_size", vocabulary_size)
    if precision != "float32":
        keras.config.set_dtype_policy(precision)
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GemmaBackbone(
        query_head_dim_normalize=True, use_post_ffw_norm=True, use_post_attention_norm=True,
        attention_logit_soft_cap=50.0, final_logit_soft_cap=30.0, use_sliding_window_attention=True, **config,
    )  # fmt: skip
    causal_lm = keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)
    compile_for_lora(causal_lm, dataclasses.replace(train, jit_compile=jit_compile))
    return causal_lm


def peak_rss_mib() -> float:
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


def time_path(causal_lm, split, boundaries: list[int], batch_size: int, seed: int) -> dict:
    """Compiles every shape of the path once (timed apart), then times one pass over all examples."""
    from maeum import batching

    lengths = split.lengths - 1
    plans = batching.plan_batches(lengths, boundaries, batch_size, np.random.default_rng(seed))
    started = time.perf_counter()
    for length in sorted({p.length for p in plans}):  # warm-up: one compile per shape
        plan = next(p for p in plans if p.length == length)
        causal_lm.train_on_batch(*batching.make_batch(split.ids, split.weights, split.offsets, plan))
    compile_seconds = time.perf_counter() - started
    batches = list(batching.iterate_batches(split, plans))
    started = time.perf_counter()
    for x, y, weights in batches:
        causal_lm.train_on_batch(x, y, sample_weight=weights)
    seconds = time.perf_counter() - started
    stats = batching.padding_stats(lengths, plans)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EXAMPLES} examples (about a minute on 2 CPU cores)")
    parser.add_argument("--examples", type=int, help=f"examples per path (default {FULL_EXAMPLES})")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="cpu-small")
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "mixed_bfloat16"])
    parser.add_argument("--no-xla-comparison", action="store_true", help="skip timing the default path without XLA")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak for MFU (e.g. 989 for H100 bf16 dense)")
    parser.add_argument("--boundaries", type=int, nargs="+", help="buckets of the default path (default: params.yaml)")
    parser.add_argument("--batch-size", type=int, help="batch size of the default path (default: params.yaml)")
    parser.add_argument("--lengths", choices=["aihub", "corpus"], default="aihub",
                        help="aihub: the real corpus's length profile (default); corpus: the synthetic sample as tokenized here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    prepare_process()
    import keras

    count = args.examples or (QUICK_EXAMPLES if args.quick else FULL_EXAMPLES)
    split, vocabulary_size, train = realistic_examples(count, args.seed)
    if args.lengths == "aihub":
        split = aihub_like(split, count, args.seed, train.sequence_length)
    lengths = split.lengths
    default = {"boundaries": args.boundaries or list(train.bucket_boundaries), "batch_size": args.batch_size or train.batch_size}
    jit = train.jit_compile
    causal_lm = build_model(args.shape, vocabulary_size, args.precision, train, jit_compile=jit)
    parameters = int(causal_lm.backbone.count_params())
    print(f"model {args.shape}: {parameters:,} parameters; {len(split)} examples ({args.lengths} lengths: mean "
          f"{lengths.mean():.0f}, p99 {np.percentile(lengths, 99):.0f}); backend {keras.config.backend()}; "
          f"precision {args.precision}; jit_compile {jit}", flush=True)  # fmt: skip

    recipe = time_path(causal_lm, split, RECIPE["boundaries"], RECIPE["batch_size"], args.seed)
    print(f"recipe  (fixed 256, batch 1): {recipe}", flush=True)
    ours = time_path(causal_lm, split, default["boundaries"], default["batch_size"], args.seed)
    print(f"default (buckets {default['boundaries']}, batch {default['batch_size']}): {ours}", flush=True)

    result = {
        "shape": args.shape,
        "parameters": parameters,
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

    if jit and not args.no_xla_comparison and keras.config.backend() == "tensorflow":
        without_xla = build_model(args.shape, vocabulary_size, args.precision, train, jit_compile=False)
        plain = time_path(without_xla, split, default["boundaries"], default["batch_size"], args.seed)
        print(f"default without XLA: {plain}", flush=True)
        result["useful_tokens_per_s_default_no_xla"] = plain["useful_tokens_per_s"]
        result["xla_speedup"] = round(ours["useful_tokens_per_s"] / plain["useful_tokens_per_s"], 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
