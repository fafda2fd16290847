"""Tiny generated datasets: the training tests never need ../shared."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest


def write_idx(path: Path, array: np.ndarray) -> Path:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())
    return path


def gaussian_with_outliers(rows: int = 400, features: int = 6, outliers: int = 20, seed: int = 0):
    """A Gaussian cloud (label 0) plus far-away planted outliers (label 1)."""
    rng = np.random.default_rng(seed)
    normal = rng.standard_normal((rows, features))
    far = rng.standard_normal((outliers, features)) * 0.5 + 8.0
    x = np.concatenate([normal, far]).astype(np.float64)
    y = np.concatenate([np.zeros(rows), np.ones(outliers)]).astype(np.int64)
    return x, y


def tiny_images(rows: int = 120, side: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bright squares at one of two places on a dark background, uint8 0..255, labelled by place."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 30, size=(rows, side, side)).astype(np.uint8)
    labels = rng.integers(0, 2, size=rows)
    for image, label in zip(images, labels, strict=True):
        corner = 1 if label == 0 else side // 2
        image[corner : corner + 3, corner : corner + 3] = 230
    return images, labels.astype(np.uint8)


@pytest.fixture
def tabular_npz(tmp_path: Path) -> Path:
    x, y = gaussian_with_outliers()
    path = tmp_path / "table.npz"
    np.savez(path, X=x, y=y)
    return path


@pytest.fixture
def image_idx(tmp_path: Path) -> Path:
    images, labels = tiny_images()
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    return write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
