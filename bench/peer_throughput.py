"""Peer benchmark: the project's training path against the Hugging Face stack, same model, same examples.

    pip install -e ".[peer]"                                   # torch, transformers, peft, trl (never needed otherwise)
    python bench/peer_throughput.py --quick                    # CPU, under 5 minutes on 2 cores
    python bench/peer_throughput.py --full-logits              # CPU, fuller run, plus maeum with keras-hub's full logits
    bash bench/gpu/run.sh                                      # GPU (see that file): Gemma2-2B shape, bfloat16, JAX

Both sides train one Gemma2-shaped model (same layers, hidden size, heads, head_dim, vocabulary,
soft-caps; keras-hub's `intermediate_dim` counts gate + up, so it is twice transformers'
`intermediate_size`; the parameter counts are checked equal) with random weights, LoRA rank 2 on
query and value, on the same examples (the AI Hub length profile of bench/train_throughput.py):

- maeum: the train stage's own functions with params.yaml's `train:` as the 2B recipe reads it
  (not `train.tiny`): `boundaries_for` (the best `bucket_count` bucket lengths), `epoch_plan`
  (length-sorted batches of `batch_size`), `lora_training_model` (XLA; the vocabulary projection
  only at the loss positions, see maeum/loss_positions.py) and `training_batches`, one
  `train_on_batch` per batch. Every compiled shape is warmed up first; its compile time is reported apart.
- peer: `transformers.Gemma2ForCausalLM` (eager attention, as Gemma2's soft-capping needs) + a
  peft `LoraConfig` + TRL's `SFTTrainer` on pre-tokenized prompt/completion examples
  (completion-only loss), length-grouped sampling (`train_sampling_strategy="group_by_length"`),
  each batch padded to its longest example, no gradient checkpointing (TRL's default turns it on).
  `--peer-padding free` uses TRL's padding-free batches instead (one row per batch; transformers
  builds the block-diagonal mask from `position_ids`, so eager attention stays exact, but it then
  computes attention over the whole packed row: slower on CPU). Its first `PEER_WARMUP_STEPS`
  steps are left out of the timing.

Each side runs in its own process (its peak RSS is that process's VmHWM). The machine is shared, so
the sides are timed interleaved: each process compiles / warms up alone while the others wait, then
they take turns, `--chunk-steps` training steps each, and each side's time is the sum of its own
chunks; a change of load in between hits both sides alike (`--sequential`, for a machine of one's
own, runs them one after another). Useful tokens are the positions that
predict a real next token, `len(example) - 1` per example on both sides; the padded fraction is,
for both, 1 - useful tokens / computed positions (so it counts each example's last token, which
predicts nothing, as padding on both sides). The last stdout line is one JSON object.

`--full-logits` adds a third process: the maeum path with keras-hub's `GemmaCausalLM` itself, which
projects every position onto the vocabulary (the train stage before it trained at the loss
positions only), for the gain of the loss positions within the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere
sys.path.insert(0, str(REPO / "bench"))

from train_throughput import (  # noqa: E402
    SHAPES, aihub_like, build_model, parameter_counts, peak_device_memory_mib, peak_rss_mib, planned_batches,
    realistic_examples, recipe_params, warm_up,
)  # fmt: skip

from maeum.runtime import prepare_process  # noqa: E402

EXAMPLES_FILE, META_FILE = "examples.npz", "examples.json"
# transformers' length grouping keeps at least 4 megabatches (of up to 50 batches): below 1,600 examples its groups
# shrink and it pads more. The full run's 2,048 give both sides their full-size groups (400 and 512 examples).
QUICK_EXAMPLES, FULL_EXAMPLES = 192, 2048
MESSAGE = "@@"  # a child's protocol lines: "@@ready {...}", "@@chunk {...}", "@@result {...}"; the parent answers "go"
CHUNK_STEPS = 8  # steps a side trains per turn
PEER_WARMUP_STEPS = 3  # the peer's first steps (allocator growth, one-time set-up) are not timed
PEER_DEFAULT_LORA = dict(r=2, lora_alpha=2, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])  # keras-hub: alpha = rank
PEER_INSTALL = '; the peer side needs the extra: pip install -e ".[peer]"'
PEER_SPECIAL = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}  # Gemma's ids, as the project's tokenizer has them


# === Examples: built once, read by every side ===


def write_examples(work: Path, count: int, seed: int) -> dict[str, Any]:
    """Builds the examples (tokenizer trained on the sample corpus, AI Hub length profile) into `work`."""
    split, vocabulary_size, train = realistic_examples(count, seed)
    split = aihub_like(split, count, seed, train.sequence_length)
    work.mkdir(parents=True, exist_ok=True)
    split.save(work / EXAMPLES_FILE)
    meta = {"vocabulary_size": int(vocabulary_size), "examples": len(split), "seed": seed}
    (work / META_FILE).write_text(json.dumps(meta))
    return meta


def read_examples(work: Path, limit: int | None = None):
    from maeum.tokenized import TokenizedSplit

    split = TokenizedSplit.load(work / EXAMPLES_FILE)
    meta = json.loads((work / META_FILE).read_text())
    if limit is not None and limit < len(split):
        end = int(split.offsets[limit])
        split = dataclasses.replace(split, ids=split.ids[:end], weights=split.weights[:end],
                                    offsets=split.offsets[: limit + 1], prompt_lengths=split.prompt_lengths[:limit])  # fmt: skip
    return split, meta["vocabulary_size"]


def model_shape(shape: str, vocabulary_size: int) -> dict[str, int]:
    config = dict(SHAPES[shape])
    config.setdefault("vocabulary_size", vocabulary_size)
    return config


# === maeum side ===


def run_maeum(args: argparse.Namespace, work: Path, full_logits: bool) -> dict[str, Any]:
    import keras_hub  # noqa: F401  (before `rss_imports`: the framework's own memory is reported apart)

    from maeum import batching, loss_positions
    from tasks.train import boundaries_for, epoch_plan

    rss_imports = peak_rss_mib()
    split, vocabulary_size = read_examples(work, args.examples_limit)
    train = dataclasses.replace(recipe_params().train, **({"bucket_count": args.bucket_count} if args.bucket_count else {}))
    lengths = split.lengths - 1
    boundaries = boundaries_for(train, lengths)
    plans = epoch_plan(lengths, boundaries, train, 0)[: args.max_steps or None]
    model = build_model(args.shape, vocabulary_size, args.precision, train, len(plans), train.jit_compile, full_logits)
    result: dict[str, Any] = {"boundaries": boundaries, "batch_size": train.batch_size, "lora_rank": train.lora_rank,
                              "lora_targets": train.lora_targets, "jit_compile": train.jit_compile}  # fmt: skip
    if not full_logits:
        counts = loss_positions.counts_per_bucket(split, boundaries)
        result["loss_positions_per_bucket"] = {str(k): v for k, v in sorted(counts.items())}
        projected = sum(counts[p.length] * len(p.indices) for p in plans)
        result["projected_fraction"] = round(projected / sum(p.length * len(p.indices) for p in plans), 4)
    result.update(parameter_counts(model.backbone))
    result["compile_seconds"] = round(warm_up(model, split, plans, full_logits), 2)
    result["shapes"] = len({p.length for p in plans})
    batches = planned_batches(split, plans, full_logits)
    useful = [int(lengths[p.indices[p.indices != batching.PAD_ROW]].sum()) for p in plans]

    def train_steps(first: int, last: int) -> tuple[int, int]:
        for x, y, weights in batches[first:last]:
            model.train_on_batch(x, y, sample_weight=weights)
        return sum(useful[first:last]), sum(p.length * len(p.indices) for p in plans[first:last])

    result.update(take_turns(len(plans), args.chunk_steps, train_steps))
    result.update({
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "rss_after_imports_mib": round(rss_imports, 1),
        "peak_device_memory_mib": peak_device_memory_mib(),
        "versions": maeum_versions(),
    })  # fmt: skip
    return result


# === The turn-taking protocol between the parent and each side ===


def tell(kind: str, payload: dict[str, Any]) -> None:
    print(f"{MESSAGE}{kind} {json.dumps(payload)}", flush=True)


def wait_for_turn() -> None:
    if not sys.stdin.readline():  # the parent is gone
        sys.exit(3)


def take_turns(steps: int, chunk: int, train_steps) -> dict[str, Any]:
    """Announces readiness, then trains `chunk` steps per turn granted by the parent, timing only the turns.

    Args:
        steps: steps in all.
        chunk: steps per turn.
        train_steps: `(first, last) -> (useful tokens, computed positions)` trains steps [first, last).
    """
    tell("ready", {"steps": steps})
    seconds, useful, positions = 0.0, 0, 0
    for first in range(0, steps, chunk):
        wait_for_turn()
        started = time.perf_counter()
        chunk_useful, chunk_positions = train_steps(first, min(first + chunk, steps))
        elapsed = time.perf_counter() - started
        seconds, useful, positions = seconds + elapsed, useful + chunk_useful, positions + chunk_positions
        tell("chunk", {"seconds": round(elapsed, 4)})
    return measured(steps, seconds, useful, positions)


def measured(steps: int, seconds: float, useful: int, positions: int) -> dict[str, Any]:
    return {
        "timed_steps": steps,
        "seconds": round(seconds, 3),
        "useful_tokens": useful,
        "useful_tokens_per_s": round(useful / seconds, 1),
        "positions_per_s": round(positions / seconds, 1),
        "steps_per_s": round(steps / seconds, 3),
        "pad_fraction": round(1 - useful / positions, 4),
    }


def maeum_versions() -> dict[str, str]:
    import keras
    import keras_hub

    versions = {"keras": keras.__version__, "keras_hub": keras_hub.__version__, "backend": keras.config.backend(),
                "numpy": np.__version__}  # fmt: skip
    if keras.config.backend() == "jax":
        import jax

        versions["jax"] = jax.__version__
    elif keras.config.backend() == "tensorflow":
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    return versions


# === peer side: transformers + peft + TRL ===


def peer_model(shape: dict[str, int], precision: str, device: str):
    """`Gemma2ForCausalLM` of the same shape (keras `intermediate_dim` = gate + up = 2 x `intermediate_size`)."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    gemma2 = dict(final_logit_softcapping=30.0, attn_logit_softcapping=50.0, query_pre_attn_scalar=shape["head_dim"])
    config = Gemma2Config(
        vocab_size=shape["vocabulary_size"], hidden_size=shape["hidden_dim"], intermediate_size=shape["intermediate_dim"] // 2,
        num_hidden_layers=shape["num_layers"], num_attention_heads=shape["num_query_heads"],
        num_key_value_heads=shape["num_key_value_heads"], head_dim=shape["head_dim"],
        sliding_window=shape["sliding_window_size"], pad_token_id=0, eos_token_id=1, bos_token_id=2, **gemma2,
    )  # fmt: skip
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    dtype = torch.bfloat16 if precision != "float32" else torch.float32
    with torch.device(device):  # random weights made where they are used: no 2B copy through host memory
        model = Gemma2ForCausalLM(config).to(dtype)
    return model


def peer_tokenizer():
    """A tokenizer object only for the pad/eos ids SFTTrainer reads; the examples come tokenized."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(PEER_SPECIAL, unk_token="<unk>")),
                                   pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>")  # fmt: skip


def run_peer(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import datasets
    import peft
    import torch
    import transformers
    import trl

    rss_imports = peak_rss_mib()
    split, vocabulary_size = read_examples(work, args.examples_limit)
    train = recipe_params().train
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = model_shape(args.shape, vocabulary_size)
    model = peer_model(shape, args.precision, device)
    parameters = int(model.num_parameters())
    rows = [split.example(i) for i in range(len(split))]
    # completion_mask marks the response ids: TRL then sets the other labels to -100; label t+1 is
    # predicted at t, so the loss covers exactly the targets the project weights.
    dataset = datasets.Dataset.from_dict({
        "input_ids": [ids.tolist() for ids, _ in rows],
        "completion_mask": [(weights > 0).astype(int).tolist() for _, weights in rows],
    })  # fmt: skip
    steps = -(-len(split) // train.batch_size)
    if args.max_steps:
        steps = min(steps, PEER_WARMUP_STEPS + args.max_steps)
    config = trl.SFTConfig(
        output_dir=str(work / "peer"), per_device_train_batch_size=train.batch_size, learning_rate=train.learning_rate,
        weight_decay=train.weight_decay, lr_scheduler_type="constant", num_train_epochs=1, max_steps=steps,
        train_sampling_strategy="group_by_length",  # length-sorted megabatches: transformers' answer to padding
        padding_free=args.peer_padding == "free", completion_only_loss=True, max_length=None,
        gradient_checkpointing=False,  # TRL turns it on by default: it saves memory by recomputing, it costs time
        use_cpu=device == "cpu", bf16=False, logging_steps=10**9, save_strategy="no", report_to="none",
        disable_tqdm=True, seed=train.seed, data_seed=train.seed, dataloader_num_workers=0, optim="adamw_torch",
    )  # fmt: skip
    clock = StepClock(device, PEER_WARMUP_STEPS, args.chunk_steps, steps)
    trainer = counting_trainer(trl.SFTTrainer, clock)(
        model=model, args=config, train_dataset=dataset, processing_class=peer_tokenizer(),
        peft_config=peft.LoraConfig(task_type="CAUSAL_LM", **PEER_DEFAULT_LORA), callbacks=[clock],
    )  # fmt: skip
    trainable, _ = trainer.model.get_nb_trainable_parameters()
    trainer.train()
    return {
        "parameters": parameters,
        "lora_parameters": int(trainable),
        "device": device,
        "padding": args.peer_padding,
        "batch_size": train.batch_size,
        "warmup_steps": PEER_WARMUP_STEPS,
        "warmup_seconds": round(clock.warmup_seconds, 2),
        **measured(clock.steps - PEER_WARMUP_STEPS, clock.seconds, clock.useful, clock.positions),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "rss_after_imports_mib": round(rss_imports, 1),
        "peak_device_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                     "trl": trl.__version__, "datasets": datasets.__version__, "threads": torch.get_num_threads()},
    }  # fmt: skip


class StepClock:
    """A `TrainerCallback` (duck-typed): after the warm-up steps, takes turns with the parent `chunk` steps at a time.

    `count` sees each step's batch (from `training_step`), `on_step_end` closes the step; only the
    steps inside granted turns are timed and counted.
    """

    def __init__(self, device: str, warmup: int, chunk: int, steps: int):
        self.device, self.warmup, self.chunk, self.total = device, warmup, chunk, steps
        self.steps, self.seconds, self.useful, self.positions = 0, 0.0, 0, 0
        self.batch = (0, 0)
        self.started = self.turn_started = time.perf_counter()
        self.warmup_seconds = 0.0

    def count(self, inputs: dict) -> None:
        ids = inputs["input_ids"]
        if "attention_mask" in inputs:  # padded rows
            real = int(inputs["attention_mask"].sum())
            sequences = int((inputs["attention_mask"].sum(dim=1) > 0).sum())
        else:  # padding-free: one row, each sequence's positions restart at 0
            real = int(ids.numel())
            sequences = int((inputs["position_ids"] == 0).sum())
        self.batch = (real - sequences, int(ids.numel()))

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
        self.steps += 1
        if self.steps > self.warmup:
            self.useful += self.batch[0]
            self.positions += self.batch[1]
        timed = self.steps - self.warmup
        if timed == 0:
            self.warmup_seconds = time.perf_counter() - self.started
            tell("ready", {"steps": self.total - self.warmup})
        elif timed > 0 and (timed % self.chunk == 0 or self.steps == self.total):
            elapsed = time.perf_counter() - self.turn_started
            self.seconds += elapsed
            tell("chunk", {"seconds": round(elapsed, 4)})
        else:
            return
        if self.steps < self.total:
            wait_for_turn()
            self.turn_started = time.perf_counter()

    def __getattr__(self, name: str):  # every other callback event: nothing to do
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)


def counting_trainer(base: type, clock: StepClock) -> type:
    """`base` whose `training_step` hands each batch to `clock` before training on it."""

    class CountingTrainer(base):
        def training_step(self, model, inputs, *args, **kwargs):
            clock.count(inputs)
            return super().training_step(model, inputs, *args, **kwargs)

    return CountingTrainer


# === Orchestration: one process per side, taking turns ===


def thread_env(threads: int) -> dict[str, str]:
    """Environment giving every framework `threads` compute threads (0: each framework's default)."""
    if not threads:
        return {}
    count = str(threads)
    env = {"OMP_NUM_THREADS": count, "MKL_NUM_THREADS": count, "TF_NUM_INTRAOP_THREADS": count,
           "TF_NUM_INTEROP_THREADS": count, "OMP_WAIT_POLICY": "PASSIVE"}  # fmt: skip
    if threads == 1:  # JAX's XLA CPU client has no thread-count variable, only this switch
        env["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                            "intra_op_parallelism_threads=1").strip()  # fmt: skip
    return env


class Side:
    """One side's child process: started, waited for until ready, then granted turns."""

    def __init__(self, name: str, argv: list[str], work: Path, threads: int, timeout: float | None = None):
        command = [sys.executable, str(Path(__file__).resolve()), "--side", name, "--work", str(work), *argv]
        self.name, self.result, self.error = name, None, None
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                        env={**os.environ, **thread_env(threads)})  # fmt: skip
        self.timer = threading.Timer(timeout, self.process.kill) if timeout else None
        if self.timer:
            self.timer.daemon = True
            self.timer.start()

    def read_until(self, *kinds: str) -> tuple[str, dict] | None:
        """Echoes the child's output up to its next protocol line of one of `kinds`; None if it ended first."""
        for line in self.process.stdout:
            if line.startswith(MESSAGE):
                kind, _, payload = line[len(MESSAGE) :].partition(" ")
                if kind == "result":
                    self.result = json.loads(payload)
                if kind in kinds:
                    return kind, json.loads(payload)
            else:
                print(f"  [{self.name}] {line}", end="", flush=True)
        self.finish()
        return None

    def turn(self) -> bool:
        """Grants one turn; False once the side has no more (its result, or its failure, is then known)."""
        try:
            self.process.stdin.write("go\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass
        return self.read_until("chunk") is not None

    def finish(self) -> None:
        self.read_rest()
        if self.timer:
            self.timer.cancel()
        if self.process.wait() != 0 or self.result is None:
            self.error = f"the {self.name} side failed (exit {self.process.returncode})"

    def read_rest(self) -> None:
        for line in self.process.stdout:
            if line.startswith(f"{MESSAGE}result "):
                self.result = json.loads(line[len(MESSAGE) + len("result ") :])
            elif not line.startswith(MESSAGE):
                print(f"  [{self.name}] {line}", end="", flush=True)


def run_sides(names: list[str], argv: list[str], work: Path, args: argparse.Namespace, on_result) -> dict[str, str]:
    """Runs the sides; returns the failures. `on_result(name, result)` is called as each side finishes.

    Interleaved (default): each side starts alone up to its first timed step while the started ones
    wait (using no CPU), then they get turns round-robin. `args.sequential`: one side after another.
    """
    failures: dict[str, str] = {}

    def start(name: str) -> Side | None:
        side = Side(name, argv, work, args.threads, args.side_timeout.get(name))
        if side.read_until("ready") is None:
            done(side)
            return None
        return side

    def done(side: Side) -> None:
        if side.error or side.result is None:
            failures[side.name] = side.error or "no result"
            print(f"{failures[side.name]}{PEER_INSTALL if side.name == 'peer' else ''}", flush=True)
        else:
            on_result(side.name, side.result)

    if args.sequential:
        for name in names:
            side = start(name)
            while side and side.turn():
                pass
            if side:
                done(side)
        return failures
    ready = [side for side in map(start, names) if side]
    while ready:
        for side in list(ready):
            if not side.turn():
                ready.remove(side)
                done(side)
    return failures


def run_once(name: str, argv: list[str], work: Path) -> dict[str, Any]:
    side = Side(name, argv, work, threads=0)
    side.read_until()
    if side.error:
        raise RuntimeError(side.error)
    return side.result


def summary_line(name: str, side: dict[str, Any]) -> str:
    memory = f"; peak GPU memory {side['peak_device_memory_mib']:,.0f} MiB" if side.get("peak_device_memory_mib") else ""
    compile_note = f"; compile {side['compile_seconds']} s ({side['shapes']} shapes)" if "compile_seconds" in side else ""
    return (f"{name}: {side['useful_tokens_per_s']:,.1f} useful tokens/s, padded fraction {side['pad_fraction']:.3f}, "
            f"{side['steps_per_s']} steps/s{compile_note}; peak RSS {side['peak_rss_mib']:,.0f} MiB "
            f"({side['rss_after_imports_mib']:,.0f} after imports){memory}; {side['versions']}")  # fmt: skip


def combine(args: argparse.Namespace, shape: dict[str, int], sides: dict[str, dict]) -> dict[str, Any]:
    ours = sides["maeum"]
    result: dict[str, Any] = {
        "shape": {"name": args.shape, **shape},
        "precision": args.precision,
        "examples": args.count,
        "threads": args.threads or "default",
        "parameters_maeum": ours["parameters"],
        "lora_parameters_maeum": ours["lora_parameters"],
        "useful_tokens_per_s_maeum": ours["useful_tokens_per_s"],
        "pad_fraction_maeum": ours["pad_fraction"],
        "peak_rss_mib_maeum": ours["peak_rss_mib"],
        "compile_seconds_maeum": ours["compile_seconds"],
        "projected_fraction_maeum": ours["projected_fraction"],
        "boundaries_maeum": ours["boundaries"],
        "batch_size": ours["batch_size"],
        "versions_maeum": ours["versions"],
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    for name, side in sides.items():
        result[f"peak_device_memory_mib_{name}"] = side.get("peak_device_memory_mib")
        result[f"model_tflops_4n_{name}"] = round(4 * side["parameters"] * side["useful_tokens_per_s"] / 1e12, 4)
        if args.peak_tflops:
            result[f"mfu_4n_{name}"] = round(result[f"model_tflops_4n_{name}"] / args.peak_tflops, 4)
    if "peer" in sides:
        peer = sides["peer"]
        result.update({
            # keras-hub's LoRA factors each (heads, hidden, head_dim) kernel as (heads x hidden, r) x (r, head_dim),
            # peft each (hidden, heads x head_dim) matrix as (hidden, r) x (r, heads x head_dim): same rank, other count.
            "parameters_equal": ours["parameters"] == peer["parameters"],
            "parameters_peer": peer["parameters"],
            "lora_parameters_peer": peer["lora_parameters"],
            "useful_tokens_per_s_peer": peer["useful_tokens_per_s"],
            "ratio": round(ours["useful_tokens_per_s"] / peer["useful_tokens_per_s"], 2),
            "pad_fraction_peer": peer["pad_fraction"],
            "peak_rss_mib_peer": peer["peak_rss_mib"],
            "peer_padding": peer["padding"],
            "peer_warmup_seconds": peer["warmup_seconds"],
            "ratio_method": "sequential" if args.sequential else f"interleaved turns of {args.chunk_steps} steps",
            "versions_peer": peer["versions"],
        })  # fmt: skip
    if "maeum_full_logits" in sides:
        full = sides["maeum_full_logits"]
        result.update({
            "useful_tokens_per_s_maeum_full_logits": full["useful_tokens_per_s"],
            "loss_positions_gain": round(ours["useful_tokens_per_s"] / full["useful_tokens_per_s"], 3),
            "peak_rss_mib_maeum_full_logits": full["peak_rss_mib"],
            "compile_seconds_maeum_full_logits": full["compile_seconds"],
        })  # fmt: skip
        if "peer" in sides:
            result["ratio_full_logits"] = round(full["useful_tokens_per_s"] / sides["peer"]["useful_tokens_per_s"], 2)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EXAMPLES} examples (under 5 minutes on 2 CPU cores)")
    parser.add_argument("--examples", type=int, help=f"examples per side (default {FULL_EXAMPLES})")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="cpu-small")
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--backend", choices=["tensorflow", "jax"], help="maeum's Keras backend (default: train.backend)")
    parser.add_argument("--bucket-count", type=int, help="maeum's bucket lengths (default: train.bucket_count)")
    parser.add_argument("--max-steps", type=int, help="time at most this many steps per side (after the peer's warm-up)")
    parser.add_argument("--full-logits", action="store_true",
                        help="also time maeum with keras-hub's GemmaCausalLM, which projects every position onto the vocabulary")
    parser.add_argument("--no-peer", action="store_true", help="leave the Hugging Face side out")
    parser.add_argument("--peer-padding", choices=["longest", "free"], default="longest",
                        help="longest: pad each batch to its longest example (default, faster on CPU); free: TRL's "
                             "padding-free batches")
    parser.add_argument("--examples-file", type=Path, help="a folder written by --write-examples (no TensorFlow needed)")
    parser.add_argument("--write-examples", type=Path, help="only build the examples into this folder and exit")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak for MFU (H200 bf16: ~790 measured)")
    parser.add_argument("--json-out", type=Path, help="also write the result JSON here")
    parser.add_argument("--threads", type=int, default=1,
                        help="compute threads for each side (default 1; 0: the frameworks' defaults). On a shared "
                             "2-core machine, 2 threads made torch's OpenMP 10x slower whenever another process ran")
    parser.add_argument("--chunk-steps", type=int, default=CHUNK_STEPS, help="steps per turn when interleaving")
    parser.add_argument("--sequential", action="store_true",
                        help="time the sides one after another instead of interleaved (a machine of one's own)")
    parser.add_argument("--side-timeout", nargs="+", default=[], metavar="SIDE=SECONDS",
                        help="kill a side after this long (the others go on), e.g. maeum=220 peer=120")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--side", choices=("data", "maeum", "maeum_full_logits", "peer"), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--examples-limit", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.count = args.examples or (QUICK_EXAMPLES if args.quick else FULL_EXAMPLES)
    args.side_timeout = {name: float(seconds) for name, _, seconds in (item.partition("=") for item in args.side_timeout)}
    return args


def child(args: argparse.Namespace) -> int:
    backend = args.backend or recipe_params().train.backend
    prepare_process(backend=backend)
    if args.side == "data":
        tell("result", write_examples(args.work, args.count, args.seed))
    elif args.side == "peer":
        tell("result", run_peer(args, args.work))
    else:
        tell("result", run_maeum(args, args.work, full_logits=args.side == "maeum_full_logits"))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.side:
        return child(args)
    if args.write_examples:
        prepare_process()
        print(json.dumps(write_examples(args.write_examples, args.count, args.seed)))
        return 0
    started = time.perf_counter()
    sides: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="peer-bench-") as tmp:
        work = args.examples_file or Path(tmp)
        forward = [a for a in argv if a != "--quick"] + ["--examples", str(args.count), "--examples-limit", str(args.count)]
        meta = json.loads((work / META_FILE).read_text()) if args.examples_file else run_once("data", forward, work)
        shape = model_shape(args.shape, meta["vocabulary_size"])
        print(f"model {args.shape}: {shape}; {min(args.count, meta['examples'])} examples; precision {args.precision}; "
              f"threads {args.threads or 'default'}", flush=True)  # fmt: skip

        def on_result(name: str, result: dict) -> None:
            sides[name] = result
            print(summary_line(name, result), flush=True)
            if args.json_out and "maeum" in sides:  # what is known so far, in case a later side runs out of time
                write_json(args.json_out, combine(args, shape, sides))

        # The peer before the full-logits side: on a borrowed GPU that is the one to lose if time runs out.
        wanted = ["maeum"] + ([] if args.no_peer else ["peer"]) + (["maeum_full_logits"] if args.full_logits else [])
        failures = run_sides(wanted, forward, work, args, on_result)
    if "maeum" not in sides:
        return 1
    result = combine(args, shape, sides)
    result["failures"] = failures
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    if "peer" in sides:
        print(f"parameters: maeum {result['parameters_maeum']:,}, peer {result['parameters_peer']:,}: "
              f"{'equal' if result['parameters_equal'] else 'DIFFERENT'}; LoRA rank 2 on query/value: maeum "
              f"{result['lora_parameters_maeum']:,} (keras-hub), peer {result['lora_parameters_peer']:,} (peft)")  # fmt: skip
        print(f"ratio maeum / peer: {result['ratio']} ({result['ratio_method']})")
    if args.json_out:
        write_json(args.json_out, result)
    print(json.dumps(result))
    return 0 if not failures else 1


def write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
