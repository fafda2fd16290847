"""`python -m training calibrate`: an older package (no percentile curve, no feature shares) gets what `fit`
would have written, from the data it was trained on, and nothing from other data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.cli import EXIT_BAD_INPUT, main
from training.config import FitConfig
from training.pipeline import fit


@pytest.fixture
def older_package(tmp_path: Path) -> tuple[Path, Path, list[float]]:
    rng = np.random.default_rng(0)
    rows = tmp_path / "rows.npz"
    # Packages written before the curve was stored were calibrated on their validation rows: enough of them.
    np.savez(rows, X=rng.normal(size=(2200, 4)).astype(np.float32))
    package = fit(FitConfig(data=rows, name="old", models_dir=tmp_path / "models", epochs=2, progress=False))
    manifest = json.loads((package / "manifest.json").read_text())
    written = manifest["score"].pop("quantiles")
    shares = manifest["score"].pop("feature_shares")
    (package / "manifest.json").write_text(json.dumps(manifest))
    return package, rows, [*written, *shares]


def test_the_curve_fit_would_have_written(older_package: tuple[Path, Path, list[float]]) -> None:
    package, rows, written = older_package
    before = json.loads((package / "manifest.json").read_text())
    assert main(["calibrate", str(package), "--data", str(rows)]) == 0
    after = json.loads((package / "manifest.json").read_text())
    assert [*after["score"].pop("quantiles"), *after["score"].pop("feature_shares")] == written
    assert after == before  # the rest as it was written


def test_a_manifest_that_breaks_the_format_is_refused(
    older_package: tuple[Path, Path, list[float]], capsys: pytest.CaptureFixture[str]
) -> None:
    package, rows, _ = older_package
    manifest = json.loads((package / "manifest.json").read_text())
    del manifest["score"]["threshold"]
    (package / "manifest.json").write_text(json.dumps(manifest))
    assert main(["calibrate", str(package), "--data", str(rows)]) == EXIT_BAD_INPUT
    assert f"error: {package / 'manifest.json'}: not a package manifest (score.threshold: Field required)" in (
        capsys.readouterr().err
    )


def test_other_data_writes_nothing(older_package: tuple[Path, Path, list[float]], tmp_path: Path) -> None:
    package, _, _ = older_package
    other = tmp_path / "other.npz"
    np.savez(other, X=np.random.default_rng(1).normal(size=(300, 4)).astype(np.float32))
    before = (package / "manifest.json").read_bytes()
    assert main(["calibrate", str(package), "--data", str(other)]) == EXIT_BAD_INPUT
    assert (package / "manifest.json").read_bytes() == before
