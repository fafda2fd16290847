"""Tiny real models, trained and exported by the training code, served by an app built per session.

Packages are trained once per session (a few seconds); every test reads them, none writes into them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service import tracing
from service.app import create_app
from service.settings import Settings
from tests.service.registries import refreshed
from training.config import FitConfig
from training.pipeline import fit

TABULAR_FEATURES = 5
IMAGE_SHAPE = (8, 8)

PackageMaker = Callable[..., Path]
AppMaker = Callable[..., FastAPI]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, its spans kept in memory."""
    exporter = InMemorySpanExporter()
    assert tracing.start(env={}, processors=[SimpleSpanProcessor(exporter)])
    try:
        yield exporter
    finally:
        tracing.stop()


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with packages written by training.pipeline.fit: tab/1, tab-b/1 (tab retrained with
    another seed), conv/1 and vae/1."""
    root = tmp_path_factory.mktemp("trained")
    rng = np.random.default_rng(0)
    # Low-rank rows plus noise: something an autoencoder can learn in two epochs.
    basis = rng.normal(size=(2, TABULAR_FEATURES))
    tabular = rng.normal(size=(160, 2)) @ basis + 0.1 * rng.normal(size=(160, TABULAR_FEATURES)) + 3.0
    np.savez(root / "tabular.npz", X=tabular.astype(np.float32))
    np.save(root / "images.npy", rng.integers(0, 256, size=(96, *IMAGE_SHAPE)).astype(np.uint8))
    common: dict[str, Any] = {"models_dir": root / "models", "epochs": 2, "batch_size": 32, "progress": False}
    fit(FitConfig(data=root / "tabular.npz", name="tab", arch="dense", hidden=[8], latent=2, **common))
    # The same shape with other weights: a retrained "tab" whose answers differ.
    fit(FitConfig(data=root / "tabular.npz", name="tab-b", arch="dense", hidden=[8], latent=2, seed=1, **common))
    fit(FitConfig(data=root / "images.npy", name="conv", arch="conv", channels=[4], latent=3, **common))
    fit(FitConfig(data=root / "images.npy", name="vae", arch="vae", vae_body="dense", hidden=[16], latent=2, **common))
    return root / "models"


@pytest.fixture(scope="session")
def copy_package(trained: Path) -> PackageMaker:
    """Copies a trained package to `root/name/version`, rewriting the manifest to match, then lets
    `edit(manifest)` change it further; returns the new package folder."""

    def copy(
        source: str, root: Path, name: str, version: int = 1, edit: Callable[[dict[str, Any]], None] | None = None
    ) -> Path:
        folder = root / name / str(version)
        shutil.copytree(trained / source / "1", folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest.update(name=name, version=version)
        if edit is not None:
            edit(manifest)
        (folder / "manifest.json").write_text(json.dumps(manifest))
        return folder

    return copy


@pytest.fixture(scope="session")
def models_dir(trained: Path, copy_package: PackageMaker, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the app serves: the trained packages, a second version of tab, and one broken package."""
    root = tmp_path_factory.mktemp("served")
    for name in ("tab", "conv", "vae"):
        copy_package(name, root, name)
    copy_package("tab", root, "tab", version=2)
    broken = copy_package("tab", root, "zz-broken")
    (broken / "scorer.onnx").write_bytes(b"not an onnx graph")
    return root


@pytest.fixture(scope="session")
def make_app(models_dir: Path) -> AppMaker:
    """Builds an app over `models_dir` with these settings and loads every package, as its lifespan's first
    refresh would (ASGITransport does not run lifespans, so nothing polls)."""

    def make(**settings: Any) -> FastAPI:
        defaults: dict[str, Any] = {"providers": ("CPUExecutionProvider",), "intra_op_threads": 1}
        app = create_app(Settings(models_dir=models_dir, **(defaults | settings)))
        refreshed(app.state.registry)
        return app

    return make


@pytest.fixture(scope="session")
def app(make_app: AppMaker) -> FastAPI:
    return make_app()


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    # raise_app_exceptions=False: a 500 reaches the test as the client would see it.
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@pytest.fixture(scope="session")
def tabular_rows() -> np.ndarray:
    rng = np.random.default_rng(1)
    return (rng.normal(size=(6, TABULAR_FEATURES)) + 3.0).astype(np.float32)


@pytest.fixture(scope="session")
def image_rows() -> np.ndarray:
    return np.random.default_rng(2).integers(0, 256, size=(3, *IMAGE_SHAPE)).astype(np.float32)
