"""The data path at full size: validate + preprocess + tokenize on a corpus as large as AI Hub's.

Generates 51,628 training + 6,640 validation dialogues with the sample generator, builds the tiny
tokenizer once (untimed, in a child process, from the shipped sample), then runs the three stages
in this process through the same `run(params)` functions DVC and Prefect call, timing each.

    python bench/data_path.py            # full size
    python bench/data_path.py --scale 0.1

The last output line is one JSON object (dialogues, wall_s, peak_rss_mib, per-stage seconds).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import runpy
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from maeum.runtime import prepare_process  # noqa: E402

FULL_TRAIN, FULL_VALIDATION = 51_628, 6_640
GENERATOR = REPO / "data" / "sample" / "generate.py"
SEED = 20261125
log = logging.getLogger("bench.data_path")

PARAMS = """\
data:
  raw_dir: {raw}
validate:
  reports_dir: {work}/reports/validate
preprocess:
  out_dir: {work}/processed
model:
  base_dir: {base}
  tiny:
    pretrain_epochs: 0
tokenize:
  out_dir: {work}/tokenized
  stats_file: {work}/reports/tokenize/stats.json
"""


def build_tokenizer(work: Path) -> Path:
    """The tiny base (tokenizer only matters here) from the shipped sample, in a child process."""
    base = work / "base"
    params = work / "sample_params.yaml"
    params.write_text(PARAMS.format(raw=REPO / "data/sample", work=work / "sample", base=base))
    for stage in ("preprocess", "model"):
        subprocess.run([sys.executable, "-m", f"tasks.{stage}", "--params", str(params)], cwd=REPO, check=True,
                       capture_output=True)  # fmt: skip
    return base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full size")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args(argv)
    prepare_process()

    from maeum.config import load_params
    from tasks import preprocess, tokenize, validate

    write_corpus = runpy.run_path(str(GENERATOR))["write_corpus"]  # a script beside the data, not a package

    with tempfile.TemporaryDirectory(prefix="maeum-data-path-") as scratch:
        work = args.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        n_train, n_validation = round(FULL_TRAIN * args.scale), round(FULL_VALIDATION * args.scale)
        started = time.perf_counter()
        write_corpus(work / "raw", n_train, n_validation, SEED)
        log.info("generated %d + %d dialogues in %.1f s (untimed)", n_train, n_validation, time.perf_counter() - started)
        base = build_tokenizer(work)
        (work / "params.yaml").write_text(PARAMS.format(raw=work / "raw", work=work, base=base))
        params = load_params(work / "params.yaml")

        seconds = {}
        total_started = time.perf_counter()
        for name, stage in (("validate", validate), ("preprocess", preprocess), ("tokenize", tokenize)):
            log.info("%s ...", name)
            started = time.perf_counter()
            outcome = stage.run(params)
            seconds[name] = round(time.perf_counter() - started, 2)
            log.info("%s done in %.1f s", name, seconds[name])
        wall = time.perf_counter() - total_started
        examples = {split: stats["examples"] for split, stats in outcome.items()}

    result = {
        "dialogues": n_train + n_validation,
        "examples": examples,
        "wall_s": round(wall, 2),
        "seconds": seconds,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
