#!/usr/bin/env bash
# The peer benchmark on one GPU: Gemma2-2B shape (random weights, no download), bfloat16, LoRA rank 2,
# the project's path on JAX against transformers + peft + TRL on torch. One command, 3 to 8 minutes.
#
# Made for a machine with python3.12, jax[cuda] 0.11, torch 2.11, transformers 5.17 and peft, and no keras,
# keras-hub, tensorflow or internet. What it lacks travels in .whl/ (git-ignored, made here beforehand):
#
#   bash bench/gpu/prepare.sh          # once, on the development machine: wheels + examples into .whl/
#
# then, on the device, from the repository root, with .whl carried:
#
#   bash bench/gpu/run.sh              # writes $OUT/gpu.json (and $OUT/gpu.log); the last stdout line is the JSON
#
# Knobs (environment): EXAMPLES (512); BUCKETS (4 bucket lengths, so at most 4 compiled shapes; ~17% of the
# positions are then padding, against ~4% with params.yaml's 16); PEAK_TFLOPS (790: an H200's measured bf16
# matmul rate); LIMIT (seconds for everything, 470); MAEUM_LIMIT (320); PEER_LIMIT (110); SHAPE (gemma2-2b;
# tiny for a smoke test on a CPU); PRECISION (bfloat16); PYTHON (python3); SITE (/tmp/site: the wheels).
set -uo pipefail

OUT=${OUT:-/tmp/gpu-bench-out}
EXAMPLES=${EXAMPLES:-512}
BUCKETS=${BUCKETS:-4}
PEAK_TFLOPS=${PEAK_TFLOPS:-790}
LIMIT=${LIMIT:-470}        # everything; the full-logits side gets what maeum and the peer leave
MAEUM_LIMIT=${MAEUM_LIMIT:-320}  # XLA compiles the 2B step once per shape: up to a minute each
PEER_LIMIT=${PEER_LIMIT:-110}
SHAPE=${SHAPE:-gemma2-2b}
PRECISION=${PRECISION:-bfloat16}
PYTHON=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
mkdir -p "$OUT"

if [ ! -f .whl/examples/examples.npz ]; then
    echo "no .whl/examples/examples.npz: run bash bench/gpu/prepare.sh here first, then carry .whl" >&2
    exit 2
fi
# keras, keras-hub and the rest, next to (not over) what the machine has.
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 3
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export KERAS_BACKEND=jax
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt"

# One side after another (a machine of one's own needs no interleaving): maeum, then the peer, then maeum
# with keras-hub's full logits (the train stage before it projected only the loss positions). $OUT/gpu.json
# is rewritten after each side, so a side that runs out of time (its own limit, or LIMIT for the whole)
# leaves the earlier ones' numbers.
timeout --kill-after=10 "$LIMIT" "$PYTHON" bench/peer_throughput.py \
    --examples-file .whl/examples --examples "$EXAMPLES" --shape "$SHAPE" --precision "$PRECISION" \
    --backend jax --bucket-count "$BUCKETS" --threads 0 --peak-tflops "$PEAK_TFLOPS" --full-logits \
    --sequential --side-timeout maeum="$MAEUM_LIMIT" peer="$PEER_LIMIT" \
    --json-out "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu.log"
status=${PIPESTATUS[0]}
[ -f "$OUT/gpu.json" ] && echo "wrote $OUT/gpu.json"
exit "$status"
