"""The evaluation protocols on tiny synthetic data whose answer is known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.training.conftest import gaussian_with_outliers, tiny_images, write_idx
from training.cli import build_parser, main
from training.evaluate import EvalConfig, evaluate_mnist, served_scores
from training.models import load_checkpoint
from training.recipes import Normalisation

QUICK = ["--epochs", "5", "--quiet"]


def _tabular(tmp_path: Path, name: str, x: np.ndarray, y: np.ndarray) -> Path:
    path = tmp_path / f"{name}.npz"
    np.savez(path, X=x, y=y)
    return path


def test_tabular_protocol_finds_planted_outliers(tmp_path: Path) -> None:
    x, y = gaussian_with_outliers(rows=300, outliers=30)
    folder = tmp_path / "sets"
    folder.mkdir()
    _tabular(folder, "cloud", x, y)
    out = tmp_path / "report"
    assert main(["evaluate", "tabular", "--data", str(folder), "--out", str(out), *QUICK]) == 0
    results = json.loads((out / "tabular.json").read_text())
    (row,) = results["auroc"]
    assert row["dataset"] == "cloud" and row["rows"] == 330 and row["features"] == 6
    assert row["autoencoder"] > 0.95 and row["isolation_forest"] > 0.95
    # The outliers are fitted too (no labels), and they are one tight cluster: PCA's first component
    # points at it and rebuilds them. The autoencoder's bottleneck and weight decay do not.
    assert row["pca"] < 0.5
    assert results["mean_auroc"]["isolation_forest"] == row["isolation_forest"]
    assert (out / "tabular.png").stat().st_size > 0
    # The autoencoder once per seed: the first is the one compared, all give the spread.
    assert results["seeds"] == [0, 1, 2] and len(row["autoencoder_seeds"]) == 3
    assert row["autoencoder"] == row["autoencoder_seeds"][0]
    spread = row["autoencoder_spread"]
    assert spread["min"] == min(row["autoencoder_seeds"]) and spread["max"] == max(row["autoencoder_seeds"])
    assert spread["mean"] == pytest.approx(np.mean(row["autoencoder_seeds"]))
    assert results["autoencoder_over_seeds"]["mean_auroc_per_seed"] == row["autoencoder_seeds"]  # one set


def test_tabular_protocol_takes_its_seeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x, y = gaussian_with_outliers(rows=200, outliers=20)
    path = _tabular(tmp_path, "cloud", x, y)
    out = tmp_path / "report"
    assert main(["evaluate", "tabular", "--data", str(path), "--out", str(out), "--seeds", "3,4", *QUICK]) == 0
    results = json.loads((out / "tabular.json").read_text())
    assert results["seeds"] == [3, 4] and len(results["auroc"][0]["autoencoder_seeds"]) == 2
    assert "over seeds 3,4" in capsys.readouterr().out


def test_pca_baseline_is_exact_on_a_linear_dataset(tmp_path: Path) -> None:
    # Normal rows lie on a 2-dimensional plane in 6 dimensions (PCA with the recipe's 2 components
    # reconstructs them exactly); anomalies lie off it, but inside the normal rows' range.
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((2, 6))
    normal = rng.standard_normal((400, 2)) @ basis
    off_plane = rng.standard_normal((40, 2)) @ basis + rng.standard_normal((40, 6)) * 0.5
    x = np.concatenate([normal, off_plane])
    y = np.concatenate([np.zeros(400), np.ones(40)]).astype(np.int64)
    out = tmp_path / "report"
    path = _tabular(tmp_path, "plane", x, y)
    assert main(["evaluate", "tabular", "--data", str(path), "--out", str(out), *QUICK]) == 0
    (row,) = json.loads((out / "tabular.json").read_text())["auroc"]
    assert row["latent"] == 2
    assert row["pca"] == pytest.approx(1.0)


@pytest.mark.slow  # seconds of training
def test_mnist_protocol_splits_by_index_and_covers_every_class(tmp_path: Path) -> None:
    images, labels = tiny_images(rows=160)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    results = evaluate_mnist(tmp_path, EvalConfig(epochs=2, progress=False), train_rows=120, test_rows=40)
    assert [r["latent"] for r in results["reconstruction_mse"]] == [32, 16]
    for row in results["reconstruction_mse"]:
        assert 0 < row["autoencoder"] < 1 and 0 <= row["pca"] < 1
    assert [r["class"] for r in results["one_class_auroc"]] == ["0", "1"]
    assert [r["train_rows"] for r in results["one_class_auroc"]] == [int((labels[:120] == c).sum()) for c in (0, 1)]
    # The two classes are squares in different places: PCA of one class cannot rebuild the other.
    assert all(r["pca"] > 0.95 for r in results["one_class_auroc"])


@pytest.mark.slow  # seconds of training
def test_evaluated_score_is_the_served_score(tabular_npz: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    assert main(["fit", "--data", str(tabular_npz), "--name", "t", "--models-dir", str(models), *QUICK]) == 0
    model, norm = load_checkpoint(models / "t" / "1" / "checkpoint.pt")
    manifest = json.loads((models / "t" / "1" / "manifest.json").read_text())
    assert manifest["preprocessing"]["kind"] == "box"
    normalisation = Normalisation("box", np.array(norm["offset"]), np.array(norm["scale"]), "")
    x = np.load(tabular_npz)["X"].astype(np.float32)
    scorer = ort.InferenceSession(str(models / "t" / "1" / "scorer.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(served_scores(model, normalisation, x), scorer.run(["score"], {"x": x})[0], rtol=1e-4)


def test_help_states_the_protocols() -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    protocols = commands["evaluate"]._subparsers._group_actions[0].choices
    assert "first 8,000 images train, the last 2,000 test" in protocols["mnist"].format_help()
    assert "stratify=y, random_state=0" in protocols["tabular"].format_help()
    assert "IsolationForest(random_state=0)" in protocols["tabular"].format_help()
