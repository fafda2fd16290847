"""Models trained for the monitoring tests, with rows of their training distribution and shifted rows.

The reference a model's live scores are compared with is its normal validation rows' curve, so these models
hold out enough rows (900 and 600) for that curve to be a fair reference: the conftest's tiny models have
too few for a population stability index of fresh normal rows to stay near 0."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from training.config import FitConfig
from training.pipeline import fit

FEATURES = ["temp", "pressure", "flow", "vibration", "current", "voltage"]
SHIFTED_FEATURE = "flow"
SIDE = 8
_BASIS = np.random.default_rng(100).normal(size=(2, len(FEATURES)))


def table_rows(n: int, seed: int) -> np.ndarray:
    """Rows of the table model's distribution: two factors plus noise, around 3."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(n, 2)) @ _BASIS + 0.1 * rng.normal(size=(n, len(FEATURES))) + 3.0
    return rows.astype(np.float32)


def scaled_feature(rows: np.ndarray) -> np.ndarray:
    """The rows with one feature (SHIFTED_FEATURE) three times its value, as a sensor's changed unit would."""
    shifted = rows.copy()
    shifted[:, FEATURES.index(SHIFTED_FEATURE)] *= 3
    return shifted


def image_rows(n: int, seed: int) -> np.ndarray:
    """8 x 8 grey images: a bright bar across a dark background, at a random row, with a little noise."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 30, size=(n, SIDE, SIDE))
    images[np.arange(n), rng.integers(0, SIDE, size=n)] += 200
    return np.floor(np.clip(images, 0, 255)).astype(np.float32)  # whole pixel values, as the training file's


def inverted(images: np.ndarray) -> np.ndarray:
    return 255 - images


def trained_once(base: Path) -> Path:
    """The models of `train`, trained once under a session's temporary folder `base` for every module."""
    root = base / "monitored"
    return root / "models" if (root / "models" / "bars" / "1").is_dir() else train(root)


def train(root: Path) -> Path:
    """A models folder with `sensor/1` (a table of named features) and `bars/1` (images)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / "sensor.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(FEATURES)
        writer.writerows(table_rows(3000, seed=0).tolist())
    np.save(root / "bars.npy", image_rows(2000, seed=0).astype(np.uint8))
    common: dict[str, Any] = {"models_dir": root / "models", "batch_size": 64, "progress": False, "val_fraction": 0.3}
    fit(FitConfig(data=root / "sensor.csv", name="sensor", arch="dense", hidden=[16], latent=2, epochs=8, **common))
    fit(FitConfig(data=root / "bars.npy", name="bars", arch="dense", hidden=[32], latent=4, epochs=8, **common))
    return root / "models"
