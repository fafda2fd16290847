"""A batch job streams: a dataset four times larger does not raise the job's peak memory beyond noise (each
job runs in a process of its own, which reports its peak resident size)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.config import FitConfig
from training.pipeline import fit

pytestmark = pytest.mark.slow

FEATURES = 64
SMALL, LARGE = 100_000, 400_000
# Holding the larger dataset's extra rows (300,000 x 64 float32 read, and their answers) would cost over
# 80 MB; allocator noise between two runs measured 5-15 MB.
NOISE_MB = 30

# The peak is VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss across exec, so a child of the test
# process (torch imported: ~380 MB) reported at least the parent's size whatever it did.
JOB = """
import sys
from service.batch.config import BatchConfig
from service.batch.jobs import run_job
model, source, output = sys.argv[1:4]
run_job(BatchConfig(model=model, input=source, output=output, outputs=("score", "z"), passthrough=("id",),
                    progress=False, workers=2, batch_rows=4096))
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(int(peak.split()[1]) // 1024)
"""


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wide")
    rows = np.random.default_rng(0).normal(size=(400, FEATURES)).astype(np.float32)
    np.savez(root / "rows.npz", X=rows)
    fit(
        FitConfig(
            data=root / "rows.npz",
            models_dir=root,
            name="wide",
            arch="dense",
            hidden=[16],
            latent=4,
            epochs=1,
            batch_size=64,
            progress=False,
        )
    )
    return root / "wide" / "1"


def write_rows(path: Path, rows: int) -> Path:
    rng = np.random.default_rng(1)
    schema = pa.schema([("id", pa.int64()), *[(f"f{i}", pa.float32()) for i in range(FEATURES)]])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, 20_000):
            x = rng.normal(size=(min(20_000, rows - start), FEATURES)).astype(np.float32)
            ids = np.arange(start, start + len(x))
            writer.write_table(pa.table({"id": ids, **{f"f{i}": x[:, i] for i in range(FEATURES)}}, schema=schema))
    return path


def peak_mb(model: Path, source: Path, output: Path) -> int:
    done = subprocess.run(
        [sys.executable, "-c", JOB, str(model), str(source), str(output)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def test_peak_memory_does_not_grow_with_the_dataset(wide_model: Path, tmp_path: Path) -> None:
    small = peak_mb(wide_model, write_rows(tmp_path / "small.parquet", SMALL), tmp_path / "small-out")
    large = peak_mb(wide_model, write_rows(tmp_path / "large.parquet", LARGE), tmp_path / "large-out")
    assert pq.ParquetFile(next((tmp_path / "large-out").glob("part-*"))).metadata.num_rows == LARGE
    assert large - small < NOISE_MB, f"peak RSS {small} MB for {SMALL:,} rows, {large} MB for {LARGE:,}"
