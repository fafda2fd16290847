"""Training benchmark: rows/s and peak memory of `python -m training fit` on a generated 1,000,000 x 64
Parquet table, one process against torchrun with two, one epoch each. Results in docs/training.md.

    python bench/train.py [--rows 1000000] [--features 64] [--folder /tmp/train-bench]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/train-bench"))
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    table = args.folder / f"rows-{args.rows}x{args.features}.parquet"
    if not table.exists():
        rng = np.random.default_rng(0)
        basis = rng.normal(size=(8, args.features)).astype(np.float32)
        x = rng.normal(size=(args.rows, 8)).astype(np.float32) @ basis
        x += 0.1 * rng.normal(size=x.shape).astype(np.float32)
        pq.write_table(pa.table({f"f{i}": x[:, i] for i in range(args.features)}), table)
    data_mb = args.rows * args.features * 4 / 2**20
    fit = ["-m", "training", "fit", "--data", str(table), "--models-dir", str(args.folder / "models"), "--epochs", "1"]
    runs = {
        "1 process": [sys.executable, *fit, "--name", "one", "--replace", "--version", "1", "--quiet"],
        "torchrun, 2 processes": [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            *fit, "--name", "two", "--replace", "--version", "1", "--quiet",
        ],
    }  # fmt: skip
    results = {}
    for name, command in runs.items():
        started = time.perf_counter()
        peak = _peak_rss_kb(command)
        wall = time.perf_counter() - started
        report = json.loads(
            (args.folder / "models" / command[command.index("--name") + 1] / "1" / "report.json").read_text()
        )
        seconds = report["history"]["seconds"]
        rows = report["data"]["rows_train"]
        results[name] = {
            "train_rows_per_s": round(rows / seconds),
            "epoch_seconds": round(seconds, 2),
            "wall_seconds": round(wall, 1),
            "peak_rss_mb_largest_process": round(peak / 1024),
        }
        print(name, results[name], flush=True)
    print(json.dumps({"data_mb_float32": round(data_mb), "runs": results}, indent=2))


def _peak_rss_kb(command: list[str]) -> int:
    """Runs the command under a fresh interpreter that reports the largest resident size of its processes
    (ru_maxrss of its children: torchrun's workers included), so each run is measured on its own."""
    probe = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, *command], cwd=ROOT, check=True, capture_output=True, text=True
    )
    return int(result.stdout.strip())


if __name__ == "__main__":
    main()
