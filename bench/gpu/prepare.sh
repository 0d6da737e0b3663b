#!/usr/bin/env bash
# On the development machine (PyPI reachable, the project's venv installed): everything bench/gpu/run.sh
# needs that the GPU machine lacks, into .whl/ (git-ignored through .git/info/exclude, never committed).
#   - pure-python (or cp312) wheels: keras 3.15, keras-hub 0.32 and what they import, TRL and what it imports;
#   - .whl/examples/: the benchmark's examples, tokenized here (tokenizing needs TensorFlow, which the GPU
#     machine has not).
# Then `carry: [".whl"]` (about 7 MB) and run `bash bench/gpu/run.sh` there.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
EXAMPLES=${EXAMPLES:-512}

grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
# One version of each; these are the ones the CPU benchmark ran with (Python 3.12, x86-64 Linux).
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    keras==3.15.1 keras-hub==0.32.0 namex==0.1.0 optree==0.20.0 kagglehub==1.0.2 kagglesdk==0.1.28 \
    trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
"$PYTHON" bench/peer_throughput.py --write-examples .whl/examples --examples "$EXAMPLES"
du -sh .whl
