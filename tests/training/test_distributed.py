"""torchrun with two CPU processes (gloo) trains one model and writes one valid package, close to what a
single process learns on the same data."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.service.registries import serving
from training.config import FitConfig
from training.pipeline import fit

pytestmark = pytest.mark.slow  # torchrun, two training processes

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 4


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(3, 16))
    x = rng.normal(size=(4000, 3)) @ basis + 0.1 * rng.normal(size=(4000, 16))
    path = tmp_path_factory.mktemp("ddp") / "rows.npz"
    np.savez(path, X=x.astype(np.float32))
    return path


def single(rows: Path, models: Path, seed: int) -> float:
    config = FitConfig(data=rows, name=f"single-{seed}", models_dir=models, epochs=EPOCHS, seed=seed, progress=False)
    report = json.loads((fit(config) / "report.json").read_text())
    return float(report["metrics"]["val_loss"])


def test_two_processes_make_one_valid_package_close_to_one_process(rows: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "training", "fit", "--data", str(rows), "--name", "ddp", "--models-dir", str(models)]
    result = subprocess.run(
        [*command, "--epochs", str(EPOCHS), "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("model package") == 1  # rank 0 alone writes and reports

    registry = serving(models)
    assert registry.find("ddp").status == "ready"  # the service verifies and loads it like any package
    report = json.loads((models / "ddp" / "1" / "report.json").read_text())
    assert report["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert len(report["history"]["val_loss"]) == EPOCHS

    # Two ranks take batch_size / 2 rows each per step, so a step averages the same number of rows and an
    # epoch has the same number of steps as in one process: only the order of the rows differs, which is
    # what another seed changes. So the gap to one process is held to the seed-to-seed spread (x3).
    ddp, seed0, seed1 = float(report["metrics"]["val_loss"]), single(rows, models, 0), single(rows, models, 1)
    assert abs(ddp - seed0) <= 3 * abs(seed1 - seed0) + 1e-3 * seed0, (ddp, seed0, seed1)


def test_no_gloo_thread_outlives_the_process_group(rows: Path, tmp_path: Path) -> None:
    """gloo's threads still running when the interpreter shuts down can abort a rank (SIGABRT) as the other
    closes its connections: after `fit`, destroy_process_group has ended them (training.distributed)."""
    script = Path(__file__).with_name("threads_after_fit.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += [str(script), str(rows), str(tmp_path / "models")]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # The ranks print at once into one pipe: their objects may share a line, so each is read where it starts.
    decoder, out = json.JSONDecoder(), result.stdout
    ranks = [decoder.raw_decode(out, start.start())[0] for start in re.finditer(r'\{"rank"', out)]
    assert sorted(rank["rank"] for rank in ranks) == ["0", "1"]
    for rank in ranks:
        assert not [name for name in rank["threads"] if "gloo" in name], rank
