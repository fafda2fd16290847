"""ModelRuntime on its own: loading, the providers it got, and sampling from the latent distribution."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.manifest import parse_manifest
from service.repository import Package
from service.runtime import ModelRuntime
from tests.service.registries import CPU, package_at


@pytest.fixture(scope="module")
def tab(trained: Path) -> ModelRuntime:
    runtime = ModelRuntime(package_at(trained / "tab" / "1"), CPU)
    runtime.load()
    return runtime


def test_not_ready_until_loaded(trained: Path) -> None:
    runtime = ModelRuntime(package_at(trained / "vae" / "1"), CPU)
    assert (runtime.ready, runtime.providers) == (False, [])
    runtime.load()
    assert (runtime.ready, runtime.providers, runtime.fell_back) == (True, ["CPUExecutionProvider"], False)


def test_empirical_latents_follow_the_manifest(tab: ModelRuntime) -> None:
    z = tab.sample_latents(20_000, seed=0)
    assert z.dtype == np.float32 and z.shape == (20_000, 2)
    np.testing.assert_allclose(z.mean(axis=0), tab.manifest.latent.mean, atol=0.05)
    np.testing.assert_allclose(np.cov(z.T), tab.manifest.latent.cov, atol=0.05, rtol=0.05)
    np.testing.assert_array_equal(tab.sample_latents(3, seed=5), tab.sample_latents(3, seed=5))


def test_singular_covariance_still_samples(trained: Path) -> None:
    folder = trained / "tab" / "1"
    raw = json.loads((folder / "manifest.json").read_text())
    raw["latent"].update(mean=[1.0, -1.0], cov=[[1.0, 1.0], [1.0, 1.0]])  # rank 1: z0 - z1 is constant
    runtime = ModelRuntime(Package(parse_manifest(raw, "tab", 1), package_at(folder).graphs), CPU)
    runtime.load()
    z = runtime.sample_latents(1000, seed=0)
    assert np.isfinite(z).all()
    np.testing.assert_allclose(z[:, 0] - z[:, 1], 2.0, atol=1e-4)


def test_outputs_have_the_documented_shapes(tab: ModelRuntime) -> None:
    x = np.zeros((3, 5), np.float32)
    z, logvar = tab.encode(x)
    scores = tab.score(x)
    assert (z.shape, logvar) == ((3, 2), None)
    assert (scores.x_hat.shape, scores.score.shape, scores.sq_err.shape) == ((3, 5), (3,), (3, 5))
    assert tab.decode(z).shape == (3, 5)


def test_retired_runtime_closes_after_its_last_request(trained: Path) -> None:
    runtime = ModelRuntime(package_at(trained / "tab" / "1"), CPU)
    runtime.load()
    runtime.acquire()
    runtime.retire()
    assert not runtime.ready
    assert runtime.providers == ["CPUExecutionProvider"]  # still open for the request in flight
    runtime.release()
    assert runtime.providers == []
