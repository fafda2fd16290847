"""The fit command end to end on tiny data: packages, manifests against the schema, failures."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import onnxruntime as ort
import pytest
import torch

from service.manifest import Manifest
from tests.training.conftest import gaussian_with_outliers
from training.cli import main
from training.data import file_sha256
from training.models import load_checkpoint
from training.pipeline import MIN_CALIBRATION_ROWS

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "manifest.schema.json").read_text())
QUICK = ["--epochs", "3", "--quiet"]


def _fit(*args: str) -> int:
    return main(["fit", *args, *QUICK])


def test_tabular_package_is_complete_and_consistent(tabular_npz: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    assert _fit("--data", str(tabular_npz), "--name", "tab", "--models-dir", str(models), "--normal-label", "0") == 0
    folder = models / "tab" / "1"
    manifest = json.loads((folder / "manifest.json").read_text())
    jsonschema.validate(manifest, SCHEMA)
    # Every field the format defines is written: validating fills in no default.
    assert Manifest.model_validate(manifest).model_dump(mode="json") == manifest
    assert manifest["name"] == "tab" and manifest["version"] == 1
    assert manifest["input"] == {"kind": "tabular", "shape": [6], "dtype": "float32", "feature_names": None}
    assert manifest["training"]["data"]["sha256"] == file_sha256(tabular_npz)
    assert manifest["training"]["data"]["rows_train"] < 400  # anomalies and validation rows left out
    assert set(manifest["files"]) == {p.name for p in folder.iterdir()} - {"manifest.json"}
    for name, digest in manifest["files"].items():
        assert file_sha256(folder / name) == digest
    assert manifest["metrics"]["auroc"] > 0.9  # planted outliers far from the cloud
    latent = manifest["latent"]
    assert len(latent["mean"]) == latent["dim"] and np.array(latent["cov"]).shape == (latent["dim"],) * 2
    assert not [p for p in (models / "tab").iterdir() if p.name.startswith(".")]


@pytest.mark.slow  # seconds of training
def test_threshold_is_the_quantile_of_served_scores(tmp_path: Path) -> None:
    # Enough rows that the validation split holds MIN_CALIBRATION_ROWS normal ones: calibrated on them.
    x, y = gaussian_with_outliers(rows=2400, outliers=100)
    data = tmp_path / "big.npz"
    np.savez(data, X=x, y=y)
    models = tmp_path / "models"
    args = ["--data", str(data), "--name", "tab", "--models-dir", str(models), "--threshold-quantile", "0.9"]
    _fit(*args, "--epochs", "3")
    folder = models / "tab" / "1"
    manifest = json.loads((folder / "manifest.json").read_text())
    x = x.astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    val = np.sort(order[: round(len(x) * 0.1)])
    normal_val = val[y[val] == 0]  # 0/1 labels: calibrated on the normal rows
    assert len(normal_val) >= MIN_CALIBRATION_ROWS
    scorer = ort.InferenceSession(str(folder / "scorer.onnx"), providers=["CPUExecutionProvider"])
    scores = scorer.run(["score"], {"x": x[normal_val]})[0]
    calibration = manifest["score"]["calibration"]
    assert manifest["score"]["threshold"] == pytest.approx(float(np.quantile(scores, 0.9)), rel=1e-6)
    assert calibration["rows"] == len(normal_val) and calibration["split"] == "validation"
    above = int((scores > manifest["score"]["threshold"]).sum())
    fpr = calibration["false_positive_rate"]
    assert fpr["low"] < above / len(scores) < fpr["high"] and fpr["confidence"] == 0.95


@pytest.mark.slow  # seconds of training
def test_image_package_matches_its_checkpoint(image_idx: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    args = ["--data", str(image_idx), "--name", "img", "--models-dir", str(models), "--latent", "4", "--arch", "conv"]
    assert _fit(*args) == 0
    folder = models / "img" / "1"
    manifest = json.loads((folder / "manifest.json").read_text())
    jsonschema.validate(manifest, SCHEMA)
    assert manifest["architecture"]["kind"] == "conv" and manifest["loss"] == "mse"
    assert manifest["preprocessing"]["scale"] == [255.0]
    assert {"loss_curves.png", "reconstructions.png", "samples.png", "report.json"} <= set(manifest["files"])
    model, norm = load_checkpoint(folder / "checkpoint.pt")
    x = np.random.default_rng(0).integers(0, 255, size=(5, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x) / 255.0).numpy() * 255.0
    got = ort.InferenceSession(str(folder / "scorer.onnx")).run(["x_hat"], {"x": x})[0]
    np.testing.assert_allclose(got, want, atol=1e-3)
    assert norm["scale"] == [255.0]


@pytest.mark.slow  # seconds of training
@pytest.mark.parametrize("arch", ["dense", "vae"])
def test_other_architectures_export(image_idx: Path, tmp_path: Path, arch: str) -> None:
    models = tmp_path / "models"
    assert (
        _fit("--data", str(image_idx), "--name", "m", "--models-dir", str(models), "--arch", arch, "--noise", "0.1")
        == 0
    )
    manifest = json.loads((models / "m" / "1" / "manifest.json").read_text())
    jsonschema.validate(manifest, SCHEMA)
    assert manifest["architecture"]["variational"] == (arch == "vae")
    assert manifest["architecture"]["noise"] == 0.1


@pytest.mark.slow  # seconds of training
def test_versions_increase_and_existing_ones_are_protected(tabular_npz: Path, tmp_path: Path) -> None:
    args = ["--data", str(tabular_npz), "--name", "tab", "--models-dir", str(tmp_path)]
    assert _fit(*args) == 0 and _fit(*args) == 0
    assert sorted(p.name for p in (tmp_path / "tab").iterdir()) == ["1", "2"]
    assert _fit(*args, "--version", "1") == 2
    assert _fit(*args, "--version", "1", "--replace") == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "nowhere.npz"], "nowhere.npz: no such file"),
        (["--normal-label", "5"], "no row has label '5'"),
        (["--arch", "conv"], "--arch conv needs image inputs"),
        (["--loss", "bce"], "--loss bce needs inputs in [0, 1]"),
        (["--name", "Bad Name"], "model name 'Bad Name' must match"),
        (["--val-fraction", "1.5"], "--val-fraction must be in (0, 1)"),
        (["--trim", "0.7"], "--trim: Input should be less than 0.5"),
        (["--batch-size", "0"], "--batch-size: Input should be greater than or equal to 1"),
        (["--lr", "0"], "--lr: Input should be greater than 0"),
        (["--device", "tpu"], "--device: String should match pattern"),
        (["--threshold-quantile", "1"], "--threshold-quantile: Input should be less than 1"),
    ],
)
def test_bad_requests_exit_2_and_write_nothing(
    tabular_npz: Path, tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = {"--data": str(tabular_npz), "--name": "tab", "--models-dir": str(tmp_path / "models")}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    assert _fit(*[part for pair in base.items() for part in pair]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").rglob("manifest.json"))


def test_a_failure_after_training_leaves_no_package(
    tabular_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.pipeline

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(training.pipeline, "_draw_pictures", interrupted)
    assert _fit("--data", str(tabular_npz), "--name", "tab", "--models-dir", str(tmp_path)) == 130
    assert not (tmp_path / "tab").exists()  # the package is written elsewhere and moved in only when whole


def test_a_failed_parity_gate_exits_3_and_leaves_no_package(
    tabular_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import training.export

    monkeypatch.setattr(training.export, "PARITY_ATOL", -1.0)  # a gate no export can pass
    assert _fit("--data", str(tabular_npz), "--name", "tab", "--models-dir", str(tmp_path), "--epochs", "1") == 3
    err = capsys.readouterr().err
    assert err.startswith("error: export failed the parity gate, no package written: encoder.onnx output 'z': ")
    assert "Traceback" not in err
    assert not (tmp_path / "tab").exists()


@pytest.mark.slow  # seconds of training
def test_cli_process_exit_status_and_help(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,oops\n")
    run = subprocess.run(
        [sys.executable, "-m", "training", "fit", "--data", str(bad), "--name", "x", "--models-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert run.returncode == 2
    assert f"error: {bad}: column 'b' is not numeric" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.slow  # seconds of training
def test_same_seed_same_model(tabular_npz: Path, tmp_path: Path) -> None:
    for run in ("a", "b"):
        assert _fit("--data", str(tabular_npz), "--name", "tab", "--models-dir", str(tmp_path / run)) == 0
    hashes = [json.loads((tmp_path / run / "tab" / "1" / "manifest.json").read_text())["files"] for run in ("a", "b")]
    for graph in ("encoder.onnx", "decoder.onnx", "scorer.onnx", "checkpoint.pt"):
        assert hashes[0][graph] == hashes[1][graph]


@pytest.mark.parametrize(
    "args",
    [
        ["fit", "--data", "rows.csv", "--name", "x", "--models-dir", "models"],
        [],  # argparse alone would answer "the following arguments are required: command"
        ["fit", "--name", "x"],  # ... and here "--data is required"
        ["--help"],
    ],
    ids=["full-arguments", "no-arguments", "missing-arguments", "help"],
)
def test_without_the_training_extra_it_says_what_to_install(tmp_path: Path, args: list[str]) -> None:
    # What `make serve` leaves: the service's packages only. Hiding torch stands in for not having it.
    code = "import sys; sys.modules['torch'] = None; from training.cli import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 2
    install = "run make install-train (or: pip install -e '.[train]')"
    assert result.stderr.strip().splitlines() == [
        f"error: the training extra is not installed (missing: torch); {install}"
    ]


def test_packages_are_readable_by_other_users(tabular_npz: Path, tmp_path: Path) -> None:
    previous = os.umask(0o077)  # the strictest common umask
    try:
        assert _fit("--data", str(tabular_npz), "--name", "shared", "--models-dir", str(tmp_path), "--epochs", "1") == 0
    finally:
        os.umask(previous)
    folder = tmp_path / "shared" / "1"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert {stat.S_IMODE(path.stat().st_mode) for path in folder.iterdir()} == {0o644}


def test_the_summary_and_report_say_what_was_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(120, 3)) + 3.0
    flags = (np.arange(120) % 10 == 0).astype(int)  # every tenth row labelled anomalous
    table = tmp_path / "rows.csv"
    lines = ["a,b,class,is_anomaly"] + [f"{r[0]},{r[1]},{r[2]},{f}" for r, f in zip(rows, flags, strict=True)]
    table.write_text("\n".join(lines) + "\n")

    code = _fit("--data", str(table), "--label-column", "is_anomaly", "--name", "used", "--models-dir", str(tmp_path))

    assert code == 0
    out, err = capsys.readouterr()
    assert "warning: column 'class' is used as a feature but is named like a label; " in err
    assert "if it is one, pass --label-column class" in err
    manifest = json.loads((tmp_path / "used" / "1" / "manifest.json").read_text())
    used = manifest["training"]["data"]
    train_part = used["rows_train"] + used["rows_train_left_out"]
    assert used["rows_train_left_out"] > 0 and train_part + used["rows_val"] == 120
    assert used["left_out_because"] == "labelled anomalous (1)"
    assert (used["features"], used["label_column"]) == (["a", "b", "class"], "is_anomaly")
    report = json.loads((tmp_path / "used" / "1" / "report.json").read_text())
    assert report["data"] == used
    line = f"{used['rows_train']} training rows of 120, {used['rows_train_left_out']} left out (labelled anomalous (1))"
    assert line in out and "3 features (a, b, class); label column 'is_anomaly'" in out
