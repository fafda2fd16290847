"""A table with a label column, as a user's training CSV is (`diagnosis`: B normal, M anomalous, first of the
columns), and a small package trained on it by the training code (`--label-column diagnosis --normal-label
B`), for the tests that score that very CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from training.config import FitConfig
from training.pipeline import fit

FEATURES = ["radius", "texture", "perimeter", "area", "smoothness", "compactness", "concavity", "symmetry"]
LABEL, NORMAL, ANOMALOUS = "diagnosis", "B", "M"
MODEL = "cells"


def table(rows: int = 400, anomalies: int = 100, seed: int = 7) -> tuple[np.ndarray, list[str]]:
    """Normal rows near a plane, anomalous ones off it, shuffled: the features (float32) and the labels."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(2, len(FEATURES)))
    normal = rng.normal(size=(rows - anomalies, 2)) @ basis + 0.1 * rng.normal(size=(rows - anomalies, len(FEATURES)))
    odd = rng.normal(size=(anomalies, len(FEATURES))) * 1.5
    x = np.concatenate([normal, odd]) + 3.0
    labels = np.array([NORMAL] * (rows - anomalies) + [ANOMALOUS] * anomalies)
    order = rng.permutation(rows)
    return x[order].astype(np.float32), labels[order].tolist()


def write_csv(path: Path, x: np.ndarray, labels: list[str] | None, columns: list[str] | None = None) -> Path:
    """The rows as CSV with a header (`columns`: their order, the label among them where it is given)."""
    columns = columns or ([LABEL] if labels is not None else []) + FEATURES
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(columns)
        for i, row in enumerate(x.tolist()):
            cells = dict(zip(FEATURES, map(repr, row), strict=True)) | ({LABEL: labels[i]} if labels else {})
            writer.writerow([cells[name] for name in columns])
    return path


def train(root: Path) -> tuple[Path, Path]:
    """(the models folder holding cells/1, the CSV it was trained on)."""
    x, labels = table()
    data = write_csv(root / "cells.csv", x, labels)
    models = root / "models"
    fit(
        FitConfig(
            data=data,
            name=MODEL,
            label_column=LABEL,
            normal_label=NORMAL,
            models_dir=models,
            arch="dense",
            hidden=[8],
            latent=2,
            epochs=2,
            batch_size=32,
            progress=False,
        )
    )
    return models, data
