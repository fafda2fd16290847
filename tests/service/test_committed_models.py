"""The packages committed in models/ load, validate and answer like the PyTorch models they came from."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.images import decode_image
from service.registry import Registry
from tests.service.reference import torch_reference
from tests.service.registries import serving

MODELS = Path(__file__).resolve().parents[2] / "models"
COMMITTED = sorted(p.parent for p in MODELS.glob("*/*/manifest.json"))

pytestmark = pytest.mark.skipif(not COMMITTED, reason="no packages committed in models/")


@pytest.fixture(scope="module")
def repository() -> Registry:
    return serving(MODELS)


def test_every_committed_package_is_served(repository: Registry) -> None:
    assert {(e.name, e.version, e.status, e.reason) for e in repository.entries()} == {
        (folder.parent.name, int(folder.name), "ready", None) for folder in COMMITTED
    }


@pytest.mark.parametrize("folder", COMMITTED, ids=lambda folder: f"{folder.parent.name}/{folder.name}")
def test_committed_package_matches_pytorch(repository: Registry, folder: Path) -> None:
    runtime = repository.runtime(folder.parent.name, folder.name)
    shape = runtime.manifest.row_shape
    rng = np.random.default_rng(0)
    if runtime.manifest.input.kind == "image":
        x = rng.integers(0, 256, size=(4, *shape)).astype(np.float32)
    else:
        offset, scale = runtime.manifest.normalisation()
        x = (offset + scale * rng.standard_normal((4, *shape))).astype(np.float32)
    want_x_hat, want_score = torch_reference(folder, x)

    scores = runtime.score(x)

    np.testing.assert_allclose(scores.x_hat, want_x_hat, atol=1e-4 * float(np.abs(x).max() + 1), rtol=1e-3)
    np.testing.assert_allclose(scores.score, want_score, atol=1e-4, rtol=1e-3)


def test_mnist_packages_take_a_png(repository: Registry) -> None:
    buffer = io.BytesIO()
    Image.new("L", (28, 28), color=0).save(buffer, format="PNG")
    for entry in repository.entries():
        runtime = repository.runtime(entry.name, str(entry.version))
        if runtime.manifest.input.kind == "image":
            row = decode_image(buffer.getvalue(), runtime.manifest.row_shape, max_pixels=10_000)
            assert np.isfinite(runtime.score(row[np.newaxis]).score).all()
