"""training.AutoencoderDetector: scikit-learn's estimator checks, PyOD's conventions, the package it saves
(served by the service's own loader and by a real server), and the command line fitting through it."""

from __future__ import annotations

import io
import json
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from onnx import numpy_helper
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from tests.service.registries import serving
from tests.service.servers import running_server
from tests.training.conftest import gaussian_with_outliers
from training import AutoencoderDetector
from training.cli import main
from training.export import PARITY_ATOL, PARITY_RTOL
from training.models import load_checkpoint

# Small and fast: the estimator checks fit a few dozen times.
QUICK: dict[str, Any] = {"members": 2, "epochs": 3}

EXPECTED_FAILED_CHECKS = {
    # The one check scikit-learn runs on outlier detectors alone; it fails at its first assertion.
    "check_outliers_train": "PyOD's conventions: predict is 0/1 (1 = anomaly), not -1/1; decision_function is "
    "higher for anomalies, so there is no score_samples (higher = more normal) nor offset_; and contamination "
    "sets the threshold on held-out normal rows, not the exact share of training rows flagged",
}


@parametrize_with_checks([AutoencoderDetector(**QUICK)], expected_failed_checks=lambda _: EXPECTED_FAILED_CHECKS)
def test_scikit_learn_estimator_checks(estimator: AutoencoderDetector, check: Any) -> None:
    check(estimator)


@pytest.fixture(scope="module")
def table() -> tuple[np.ndarray, np.ndarray]:
    """420 rows of 6 features: a Gaussian cloud (y 0) and 20 planted outliers far from it (y 1)."""
    return gaussian_with_outliers()


@pytest.fixture(scope="module")
def fitted(table: tuple[np.ndarray, np.ndarray]) -> AutoencoderDetector:
    return AutoencoderDetector(**QUICK).fit(table[0])


def test_fit_sets_pyod_attributes_and_flags_the_planted_outliers(
    fitted: AutoencoderDetector, table: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = table
    assert fitted.n_features_in_ == 6 and not hasattr(fitted, "feature_names_in_")
    assert fitted.threshold_ == fitted.manifest_.score.threshold
    assert fitted.manifest_.score.calibration.quantile == 0.99  # 1 - contamination
    np.testing.assert_array_equal(fitted.decision_scores_, fitted.decision_function(x))
    np.testing.assert_array_equal(fitted.labels_, (fitted.decision_scores_ > fitted.threshold_).astype(int))
    np.testing.assert_array_equal(fitted.predict(x), fitted.labels_)
    # 8 standard deviations out, the planted outliers all score above every row of the cloud. (How many
    # are flagged depends on the calibration: unlabelled, they are among the validation rows too.)
    assert fitted.decision_scores_[y == 1].min() > fitted.decision_scores_[y == 0].max()
    assert fitted.labels_[y == 0].mean() < 0.05
    proba = fitted.predict_proba(x)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert proba[y == 1, 1].min() >= proba[y == 0, 1].max()
    assert fitted.transform(x).shape == (len(x), fitted.manifest_.latent.dim)
    assert fitted.inverse_transform(fitted.transform(x[:5])).shape == (5, 6)


def test_parameters_follow_scikit_learn_conventions(fitted: AutoencoderDetector) -> None:
    params = fitted.get_params()
    assert params["members"] == 2 and params["contamination"] == 0.01 and params["random_state"] is None
    copy = clone(fitted)
    assert copy.get_params() == params and not hasattr(copy, "threshold_")
    copy.set_params(contamination=0.05, latent=3)
    assert copy.contamination == 0.05 and copy.latent == 3 and fitted.contamination == 0.01


def test_random_state_is_the_seed(fitted: AutoencoderDetector, table: tuple[np.ndarray, np.ndarray]) -> None:
    # random_state None means seed 0; that a seed gives the same model twice is check_fit_idempotent's.
    assert fitted.manifest_.training.config["seed"] == 0
    other = AutoencoderDetector(**QUICK, random_state=1).fit(table[0])
    assert other.manifest_.training.config["seed"] == 1
    assert not np.array_equal(fitted.decision_scores_, other.decision_scores_)


def test_decision_function_is_what_the_service_serves_and_what_torch_computes(
    fitted: AutoencoderDetector, table: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x = table[0]
    fitted.save(tmp_path / "models" / "tab" / "2")
    runtime = serving(tmp_path / "models").runtime("tab", "2")  # the service's loader verifies the package
    served = runtime.score(x.astype(np.float32))
    np.testing.assert_array_equal(fitted.decision_function(x), served.score)
    np.testing.assert_array_equal(fitted.transform(x), runtime.encode(x.astype(np.float32))[0])
    assert runtime.manifest.score.threshold == fitted.threshold_

    # PyTorch, from the package's checkpoint: within the export's parity gate.
    model, norm = load_checkpoint(tmp_path / "models" / "tab" / "2" / "checkpoint.pt")
    offset, scale = (torch.tensor(norm[key], dtype=torch.float32) for key in ("offset", "scale"))
    with torch.no_grad():
        _, sq_err = model.reconstruction((torch.from_numpy(x.astype(np.float32)) - offset) / scale)
    torch_scores = sq_err.flatten(1).mean(dim=1).numpy()
    np.testing.assert_allclose(fitted.decision_function(x), torch_scores, atol=PARITY_ATOL, rtol=PARITY_RTOL)


def test_save_names_the_package_after_its_path_and_load_gives_it_back(
    fitted: AutoencoderDetector, table: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x = table[0]
    path = fitted.save(tmp_path / "models" / "cardio-ae" / "7")
    manifest = json.loads((path / "manifest.json").read_text())
    assert (manifest["name"], manifest["version"]) == ("cardio-ae", 7)
    assert manifest["training"]["config"]["name"] == "cardio-ae"
    assert json.loads((path / "report.json").read_text())["config"]["name"] == "cardio-ae"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no staging folder left

    loaded = AutoencoderDetector.load(path)
    assert loaded.threshold_ == fitted.threshold_ and loaded.n_features_in_ == 6
    for method in ("decision_function", "predict", "predict_proba", "transform"):
        np.testing.assert_array_equal(getattr(loaded, method)(x), getattr(fitted, method)(x))
    assert loaded.members == 2 and loaded.epochs == 3  # its parameters are the package's training config
    assert loaded.scaling == "box"  # chosen from the data when the model was fitted

    with pytest.raises(FileExistsError):
        fitted.save(path)
    fitted.save(path, replace=True)
    assert AutoencoderDetector.load(path).threshold_ == fitted.threshold_


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("Cardio/1", "must match"),
        ("cardio/latest", "version a positive integer"),
        ("cardio/0", "version a positive integer"),
    ],
)
def test_save_refuses_a_path_the_service_would_not_serve(
    fitted: AutoencoderDetector, tmp_path: Path, where: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        fitted.save(tmp_path / "models" / where)
    assert not (tmp_path / "models").exists()


def test_load_refuses_a_package_whose_files_do_not_match_its_manifest(
    fitted: AutoencoderDetector, tmp_path: Path
) -> None:
    path = fitted.save(tmp_path / "models" / "tab" / "1")
    (path / "scorer.onnx").write_bytes((path / "scorer.onnx").read_bytes() + b"\0")
    with pytest.raises(ValueError, match="sha256"):
        AutoencoderDetector.load(path)


def test_pickles_with_the_same_scores(fitted: AutoencoderDetector, table: tuple[np.ndarray, np.ndarray]) -> None:
    x = table[0]
    copy = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(copy.decision_function(x), fitted.decision_function(x))


def test_works_in_pipelines(table: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = table
    scaled = make_pipeline(StandardScaler(), AutoencoderDetector(**QUICK)).fit(x)
    by_hand = AutoencoderDetector(**QUICK).fit(StandardScaler().fit_transform(x))
    np.testing.assert_array_equal(scaled.decision_function(x), by_hand.decision_scores_)
    np.testing.assert_array_equal(scaled.predict(x), by_hand.labels_)

    # As a transformer: the latent codes feed a classifier; y passes through the detector unused.
    codes = make_pipeline(StandardScaler(), AutoencoderDetector(**QUICK), LogisticRegression()).fit(x, y)
    assert codes.score(x, y) > 0.95
    latent = codes[1].manifest_.latent.dim
    assert list(codes[:-1].get_feature_names_out()) == [f"autoencoderdetector{i}" for i in range(latent)]


def test_a_dataframe_names_the_features(table: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    frame = pd.DataFrame(table[0], columns=[f"f{i}" for i in range(6)])
    detector = AutoencoderDetector(**QUICK).fit(frame)
    assert detector.manifest_.input.feature_names == list(frame.columns)
    loaded = AutoencoderDetector.load(detector.save(tmp_path / "models" / "named" / "1"))
    assert list(loaded.feature_names_in_) == list(frame.columns)
    np.testing.assert_array_equal(loaded.decision_function(frame), detector.decision_scores_)


@pytest.mark.parametrize(
    ("method", "rows", "message"),
    [
        ("fit", np.full((50, 6), np.nan), "NaN"),
        ("fit", np.zeros(50), "Expected 2D array"),
        ("fit", np.zeros((2, 6)), "minimum of 3 is required"),
        ("decision_function", np.zeros((4, 5)), "X has 5 features"),
        ("decision_function", np.array([[0, 0, 0, 0, 0, np.inf]]), "infinity"),
        ("predict", np.zeros(6), "Expected 2D array"),
        ("inverse_transform", np.zeros((4, 99)), "latent values per row"),
    ],
)
def test_bad_inputs_raise_clear_value_errors(
    fitted: AutoencoderDetector, method: str, rows: np.ndarray, message: str
) -> None:
    detector = AutoencoderDetector(**QUICK) if method == "fit" else fitted
    with pytest.raises(ValueError, match=message):
        getattr(detector, method)(rows)


@pytest.mark.parametrize(("params", "message"), [({"contamination": 0.7}, "contamination"), ({"lr": "x"}, "lr")])
def test_bad_parameters_raise_value_errors_at_fit(
    table: tuple[np.ndarray, np.ndarray], params: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        AutoencoderDetector(**QUICK, **params).fit(table[0])


def test_the_command_line_and_the_estimator_write_the_same_package(
    table: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x = table[0]
    data = tmp_path / "rows.npz"
    np.savez(data, X=x)  # no labels: both train on every row
    models = tmp_path / "models"
    flags = ["--members", "2", "--epochs", "3", "--quiet"]
    assert main(["fit", "--data", str(data), "--name", "cli", "--models-dir", str(models), *flags]) == 0
    estimator = AutoencoderDetector(**QUICK).fit(x)
    estimator.save(models / "est" / "1")
    cli, est = AutoencoderDetector.load(models / "cli" / "1"), AutoencoderDetector.load(models / "est" / "1")

    assert cli.threshold_ == est.threshold_
    np.testing.assert_array_equal(cli.decision_function(x), est.decision_function(x))
    for graph in ("encoder", "decoder", "scorer"):
        assert _weights(models / "cli" / "1" / f"{graph}.onnx") == _weights(models / "est" / "1" / f"{graph}.onnx")
    # The manifests differ only where the data came from, the name, and when and how fast it was written.
    manifests = [json.loads((models / name / "1" / "manifest.json").read_text()) for name in ("cli", "est")]
    for manifest in manifests:
        for key in ("name", "created_at", "files"):
            del manifest[key]
        for key in ("data", "name", "models_dir"):
            del manifest["training"]["config"][key]
        del manifest["training"]["data"]["file"], manifest["training"]["data"]["sha256"]
        del manifest["training"]["seconds"]
    assert manifests[0] == manifests[1]


def _weights(path: Path) -> dict[str, bytes]:
    model = onnx.load(io.BytesIO(path.read_bytes()))
    return {tensor.name: numpy_helper.to_array(tensor).tobytes() for tensor in model.graph.initializer}


@pytest.mark.e2e
def test_a_real_server_serves_a_saved_package_as_its_path_names_it(
    fitted: AutoencoderDetector, table: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x = table[0][-30:]
    fitted.save(tmp_path / "models" / "tab" / "3")
    with running_server(tmp_path / "models", tmp_path / "server.log") as client:
        response = client.post("/models/tab/versions/3/score", json={"inputs": x.tolist()})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["threshold"] == pytest.approx(fitted.threshold_, rel=1e-6)
    np.testing.assert_allclose(body["scores"], fitted.decision_function(x), rtol=1e-6)
    assert body["is_anomaly"] == [bool(v) for v in fitted.predict(x)]
    np.testing.assert_allclose(body["percentiles"], 100 * fitted.predict_proba(x)[:, 1], rtol=1e-5, atol=1e-4)


def test_an_interrupted_fit_leaves_nothing_on_disk(
    table: tuple[np.ndarray, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.pipeline

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(training.pipeline, "_draw_pictures", interrupted)  # halfway through writing the package
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        AutoencoderDetector(**QUICK).fit(table[0])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # the default recipe, twice, with its out-of-fold calibration: minutes here
def test_the_example_in_the_docs_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "python-api.md").read_text()
    example = re.search(r"```python\n(.*?)```", text, re.DOTALL)
    assert example is not None
    monkeypatch.chdir(tmp_path)
    names: dict[str, Any] = {}
    exec(compile(example[1], "docs/python-api.md", "exec"), names)
    # Five rows from the training distribution, five six standard deviations off it.
    np.testing.assert_array_equal(names["flags"], [0] * 5 + [1] * 5)
    np.testing.assert_array_equal(names["pipeline"].predict(names["X_new"]), [0] * 5 + [1] * 5)
    assert AutoencoderDetector.load(tmp_path / "models" / "demo" / "1").threshold_ == names["detector"].threshold_
