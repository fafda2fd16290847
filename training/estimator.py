"""`AutoencoderDetector`: the training pipeline as a scikit-learn estimator with PyOD's detector conventions.

`fit(X)` runs the very code `python -m training fit` runs (training.pipeline's `train` then `write_package`)
and keeps the package it writes in memory; every method then runs the package's ONNX graphs in onnxruntime,
so `decision_function` is the score the service computes, to the bit. `save(path)` writes the package where
the service serves it, `load(path)` reads one back. The command line fits through `_fit_dataset` too.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from service.manifest import MANIFEST, Manifest
from training.config import Arch, FitConfig, Scaling
from training.data import Dataset
from training.distributed import World
from training.errors import DataError
from training.package import check_name, file_hashes, staging_folder, write_json
from training.pipeline import train, write_package

# fit(X) names its package so until save(models/NAME/VERSION) names it after the path.
UNSAVED_NAME, UNSAVED_VERSION = "autoencoder", 1
# Where an in-memory array's package says its data came from (manifest training.data.file).
IN_MEMORY = Path("<array>")
REPORT = "report.json"
# The pipeline needs at least two training rows after the validation split holds out one.
MIN_ROWS = 3


def _default(field: str) -> Any:
    """A FitConfig default: the command line and the estimator share one definition of each."""
    return FitConfig.model_fields[field].default


class AutoencoderDetector(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """An autoencoder anomaly detector over tables: higher scores are more anomalous.

    Parameters left at None are chosen from the data, as `python -m training fit` chooses them (see
    docs/training.md); each maps onto the FitConfig field of the same name, except `contamination`
    (threshold_quantile = 1 - contamination, PyOD's name) and `random_state` (seed: an int, or a
    RandomState that draws one; None means seed 0, so that fitting twice gives the same model, as the
    command line does). `y` is ignored: training is unsupervised, as in PyOD.
    """

    def __init__(
        self,
        *,
        latent: int | None = None,
        members: int | None = None,
        hidden: list[int] | None = None,
        arch: Arch | None = None,
        scaling: Scaling | None = None,
        noise: float | None = None,
        weight_decay: float | None = None,
        trim: float | None = None,
        epochs: int | None = None,
        lr: float = _default("lr"),
        batch_size: int = _default("batch_size"),
        val_fraction: float = _default("val_fraction"),
        contamination: float = 0.01,
        device: str | None = None,
        random_state: int | np.random.RandomState | None = None,
        verbose: bool = False,
    ) -> None:
        self.latent = latent
        self.members = members
        self.hidden = hidden
        self.arch = arch
        self.scaling = scaling
        self.noise = noise
        self.weight_decay = weight_decay
        self.trim = trim
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.contamination = contamination
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # -- fitting --------------------------------------------------------------------------------------

    def fit(self, X: Any, y: Any = None) -> AutoencoderDetector:
        """Trains on the rows of X (2-D, numeric, finite; a DataFrame's column names become the package's
        feature names) and calibrates the threshold on a validation split of them. `y` is ignored."""
        x = validate_data(self, X, dtype=np.float32, ensure_min_samples=MIN_ROWS)
        names = list(self.feature_names_in_) if hasattr(self, "feature_names_in_") else None
        data = in_memory_dataset(x, names)
        try:
            self._fit_dataset(data, self._config(), UNSAVED_VERSION, World())
        except DataError as err:
            raise ValueError(str(err)) from err
        self.decision_scores_ = self._run("scorer", "score", x)
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(np.int64)
        return self

    def _config(self) -> FitConfig:
        """The estimator's parameters as the pipeline's one config (`_from_config` is the way back)."""
        if not 0.0 < self.contamination <= 0.5:
            raise ValueError(f"contamination must be in (0, 0.5], got {self.contamination}")
        if isinstance(self.random_state, np.random.RandomState):
            seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        else:
            seed = 0 if self.random_state is None else self.random_state
        return FitConfig(
            data=IN_MEMORY,
            name=UNSAVED_NAME,
            latent=self.latent,
            members=self.members,
            hidden=self.hidden,
            arch=self.arch,
            scaling=self.scaling,
            noise=self.noise,
            weight_decay=self.weight_decay,
            trim=self.trim,
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            val_fraction=self.val_fraction,
            threshold_quantile=1.0 - self.contamination,
            device=self.device,
            seed=seed,
            progress=self.verbose,
        )

    @classmethod
    def _from_config(cls, config: FitConfig) -> AutoencoderDetector:
        """An estimator whose parameters are `config`'s (what the command line builds from its flags)."""
        return cls(
            latent=config.latent,
            members=config.members,
            hidden=config.hidden,
            arch=config.arch,
            scaling=config.scaling,
            noise=config.noise,
            weight_decay=config.weight_decay,
            trim=config.trim,
            epochs=config.epochs,
            lr=config.lr,
            batch_size=config.batch_size,
            val_fraction=config.val_fraction,
            contamination=round(1.0 - config.threshold_quantile, 12),
            device=config.device,
            random_state=config.seed,
            verbose=config.progress,
        )

    def _fit_dataset(self, data: Dataset, config: FitConfig, version: int, world: World) -> Manifest | None:
        """Trains on `data` with `config` as it stands (the command line's path, and fit's) and, on the main
        rank, writes the package into a temporary folder and keeps its files in memory. Under torchrun the
        other ranks only train: they return None and stay unfitted."""
        trained = train(config, data, world)
        if not world.is_main:
            return None
        with tempfile.TemporaryDirectory(prefix="autoencoder-package-") as folder:
            manifest = write_package(Path(folder), trained, version, world)
            files = {path.name: path.read_bytes() for path in sorted(Path(folder).iterdir()) if path.is_file()}
        self._set_package(manifest, files)
        return manifest

    def _set_package(self, manifest: Manifest, files: dict[str, bytes]) -> None:
        self.manifest_ = manifest
        self.threshold_ = float(manifest.score.threshold)
        self.n_features_in_ = manifest.features
        self._n_features_out = manifest.latent.dim
        self._files = files
        self._sessions = _sessions(manifest, files)

    # -- PyOD's and scikit-learn's methods --------------------------------------------------------------

    def decision_function(self, X: Any) -> np.ndarray:
        """The anomaly score of each row (the package's scorer.onnx, what the service serves): the mean squared
        reconstruction error in normalised space. Higher is more anomalous; above `threshold_` is an anomaly."""
        return self._run("scorer", "score", self._rows(X))

    def predict(self, X: Any) -> np.ndarray:
        """1 for an anomaly (score above `threshold_`), 0 for a normal row: PyOD's convention."""
        return (self.decision_function(X) > self.threshold_).astype(np.int64)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Per row [1 - p, p], p the score's percentile over 100 among the normal scores the threshold was
        calibrated on (the service's `percentile`, read off the package's quantile curve)."""
        scores = self.decision_function(X)
        percent = self.manifest_.score.percentiles(scores.astype(np.float32))
        if percent is None:
            raise ValueError("this package has no quantile curve (score.quantiles); refit or run training calibrate")
        p = percent.astype(np.float64) / 100.0
        return np.column_stack([1.0 - p, p])

    def transform(self, X: Any) -> np.ndarray:
        """The latent code of each row (encoder.onnx; a variational model's mean)."""
        return self._run("encoder", "z", self._rows(X))

    def inverse_transform(self, X: Any) -> np.ndarray:
        """The decoder's reconstruction of each latent code (decoder.onnx), in the units of the training data."""
        check_is_fitted(self)
        z = check_array(X, dtype=np.float32)
        if z.shape[1] != self.manifest_.latent.dim:
            raise ValueError(
                f"X has {z.shape[1]} latent values per row, but the model's code has {self._n_features_out}"
            )
        return self._run("decoder", "x_hat", z).reshape(len(z), -1)

    def _rows(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        x = validate_data(self, X, dtype=np.float32, reset=False)
        return x.reshape(len(x), *self.manifest_.row_shape)

    def _run(self, role: str, output: str, x: np.ndarray) -> np.ndarray:
        feed = self.manifest_.graphs[role].inputs[0]
        out = self._sessions[role].run([output], {feed: np.ascontiguousarray(x)})[0]
        # float32 -> float64 is exact: these are the served values, in the dtype scikit-learn expects.
        return np.asarray(out, dtype=np.float64)

    # -- model packages -------------------------------------------------------------------------------

    def save(self, path: str | Path, replace: bool = False) -> Path:
        """Writes the package to `path`, which must be `<models dir>/<name>/<version>` (an integer version):
        the service serves it as name/version. Written into a staging folder beside it and renamed into
        place, so `path` is never half written; an existing package there is replaced only with `replace`."""
        check_is_fitted(self)
        path = Path(path)
        name, version = _name_and_version(path)
        if path.exists() and not replace:
            raise FileExistsError(f"{path} exists; pass replace=True to overwrite it")
        with staging_folder(path.parent.parent, name, version) as folder:
            for file, content in self._files.items():
                (folder / file).write_bytes(content)
            _rename(folder, name, version)
        return path

    @classmethod
    def load(cls, path: str | Path) -> AutoencoderDetector:
        """A fitted estimator from a package folder, every file checked against the manifest's sha256. Its
        parameters are the package's training config; `decision_scores_` and `labels_` (scores of the
        training rows) are not in a package, so a loaded estimator has neither."""
        folder = Path(path)
        manifest = Manifest.model_validate_json((folder / MANIFEST).read_bytes())
        files = {MANIFEST: (folder / MANIFEST).read_bytes()}
        for file, digest in manifest.files.items():
            content = (folder / file).read_bytes()
            if hashlib.sha256(content).hexdigest() != digest:
                raise ValueError(f"{folder / file}: sha256 does not match the manifest")
            files[file] = content
        # Only the settings this version knows: a package outlives the flags it was trained with.
        known = {key: value for key, value in manifest.training.config.items() if key in FitConfig.model_fields}
        detector = cls._from_config(FitConfig.model_validate(known))
        detector._set_package(manifest, files)
        names = manifest.input.feature_names
        if names is not None:
            detector.feature_names_in_ = np.asarray(names, dtype=object)
        return detector

    # -- pickling: onnxruntime sessions are rebuilt from the graph bytes --------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state.pop("_sessions", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "_files" in state:
            self._sessions = _sessions(self.manifest_, self._files)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.target_tags.required = False
        tags.estimator_type = "outlier_detector"
        return tags


def in_memory_dataset(x: np.ndarray, feature_names: list[str] | None) -> Dataset:
    """Rows already in memory as the pipeline's Dataset: a table, identified by the sha256 of its float32 bytes."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    digest = hashlib.sha256(x.tobytes()).hexdigest()
    return Dataset(x=x, y=None, kind="tabular", source=IN_MEMORY, sha256=digest, feature_names=feature_names)


def _sessions(manifest: Manifest, files: dict[str, bytes]) -> dict[str, ort.InferenceSession]:
    return {
        role: ort.InferenceSession(files[graph.file], providers=["CPUExecutionProvider"])
        for role, graph in manifest.graphs.items()
    }


def _name_and_version(path: Path) -> tuple[str, int]:
    name, version = path.parent.name, path.name
    if not version.isdigit() or int(version) < 1:
        raise ValueError(f"{path}: a package lives in <models dir>/<name>/<version>, version a positive integer")
    try:
        check_name(name)
    except DataError as err:
        raise ValueError(f"{path}: {err}") from err
    return name, int(version)


def _rename(folder: Path, name: str, version: int) -> None:
    """Names the package in `folder` `name`/`version` (the service checks the manifest against the folder it
    is in) and records the same in its training config, in the manifest and report.json, whose new sha256
    the manifest then lists. A config's version of None (the next free one) stays as it was asked."""
    where: dict[str, Any] = {"name": name, "models_dir": str(folder.parent.parent)}
    report = json.loads((folder / REPORT).read_text())
    manifest = json.loads((folder / MANIFEST).read_text())
    for config in (report["config"], manifest["training"]["config"]):
        config |= where | ({"version": version} if config.get("version") is not None else {})
    write_json(folder / REPORT, report)
    manifest["name"], manifest["version"] = name, version
    manifest["files"] = file_hashes(folder)
    write_json(folder / MANIFEST, manifest)
