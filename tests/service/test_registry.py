"""The live registry: packages published, changed, broken, half-copied and removed while it serves, and the
repository API's unload and load. Numbers are checked against the PyTorch model each package came from."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from service import dataplane
from service.errors import ServiceError
from service.metrics import Metrics
from service.registry import Registry
from service.repository import Repository
from tests.service.reference import torch_reference
from tests.service.registries import CPU, publish
from tests.service.scrape import sample

pytestmark = pytest.mark.anyio


@pytest.fixture
def models(tmp_path: Path, copy_package: Any) -> Path:
    """A models folder serving tab/1 (weights A)."""
    root = tmp_path / "models"
    copy_package("tab", root, "tab", version=1)
    return root


@pytest.fixture
def stage(tmp_path: Path, copy_package: Any) -> Any:
    """Writes a package to a scratch folder (not yet published): stage(source, version, broken=False)."""

    def make(source: str, version: int, broken: bool = False) -> Path:
        scratch = tmp_path / f"scratch-{source}-{version}-{broken}"
        folder = copy_package(source, scratch, "tab", version=version)
        if broken:
            (folder / "scorer.onnx").write_bytes(b"not an onnx graph")
        return folder

    return make


async def started(models: Path) -> Registry:
    registry = Registry(Repository(models), CPU, Metrics())
    await registry.refresh()
    return registry


async def answer(registry: Registry, x: np.ndarray, version: str | None = None) -> tuple[int, np.ndarray]:
    with registry.lease("tab", version) as runtime:
        return runtime.manifest.version, (await dataplane.score(runtime, x)).scores


def expected(trained: Path, source: str, x: np.ndarray) -> np.ndarray:
    return torch_reference(trained / source / "1", x)[1]


async def test_a_published_version_serves_and_becomes_the_default(
    models: Path, stage: Any, trained: Path, tabular_rows: np.ndarray
) -> None:
    registry = await started(models)
    version, scores = await answer(registry, tabular_rows)
    assert version == 1
    np.testing.assert_allclose(scores, expected(trained, "tab", tabular_rows), rtol=1e-4, atol=1e-6)

    publish(stage("tab-b", 2), models)
    await registry.refresh()

    version, scores = await answer(registry, tabular_rows)
    assert version == 2
    np.testing.assert_allclose(scores, expected(trained, "tab-b", tabular_rows), rtol=1e-4, atol=1e-6)
    _, by_version = await answer(registry, tabular_rows, "1")
    np.testing.assert_allclose(by_version, expected(trained, "tab", tabular_rows), rtol=1e-4, atol=1e-6)
    assert sample(registry.metrics.render().decode(), "ae_model_default_version", model="tab") == 2


async def test_a_broken_newest_version_never_takes_the_name_down(
    models: Path, stage: Any, tabular_rows: np.ndarray
) -> None:
    registry = await started(models)
    publish(stage("tab", 2, broken=True), models)
    await registry.refresh()

    broken = registry.find("tab", "2")
    assert (broken.status, broken.runtime) == ("unavailable", None)
    assert broken.reason is not None and broken.reason.startswith("scorer.onnx: sha256 does not match")
    assert (await answer(registry, tabular_rows))[0] == 1
    assert registry.readiness() == (True, "ready")
    metrics = registry.metrics.render().decode()
    assert sample(metrics, "ae_model_loads_total", model="tab", version="2", outcome="failed") == 1
    assert sample(metrics, "ae_model_default_version", model="tab") == 1


async def test_a_changed_package_is_swapped_in_and_requests_in_flight_finish_on_the_old_one(
    models: Path, stage: Any, trained: Path, tabular_rows: np.ndarray
) -> None:
    registry = await started(models)
    with registry.lease("tab") as in_flight:
        publish(stage("tab-b", 1), models)  # same version folder, new files
        await registry.refresh()

        _, scores = await answer(registry, tabular_rows)
        np.testing.assert_allclose(scores, expected(trained, "tab-b", tabular_rows), rtol=1e-4, atol=1e-6)
        assert in_flight.retired
        old = (await dataplane.score(in_flight, tabular_rows)).scores
        np.testing.assert_allclose(old, expected(trained, "tab", tabular_rows), rtol=1e-4, atol=1e-6)
    assert in_flight.providers == []  # closed once its last request was done


async def test_a_change_that_fails_to_load_leaves_the_previous_copy_serving(
    models: Path, stage: Any, trained: Path, tabular_rows: np.ndarray
) -> None:
    registry = await started(models)
    publish(stage("tab-b", 1, broken=True), models)
    await registry.refresh()

    entry = registry.find("tab", "1")
    assert entry.status == "ready"
    assert entry.reason is not None and entry.reason.startswith("a changed copy failed to load")
    _, scores = await answer(registry, tabular_rows)
    np.testing.assert_allclose(scores, expected(trained, "tab", tabular_rows), rtol=1e-4, atol=1e-6)


async def test_a_half_copied_folder_is_never_served_and_is_retried(
    models: Path, stage: Any, trained: Path, tabular_rows: np.ndarray
) -> None:
    registry = await started(models)
    source, target = stage("tab-b", 2), models / "tab" / "2"
    target.mkdir()
    shutil.copy(source / "manifest.json", target)  # a plain `cp -r` caught half-way
    shutil.copy(source / "encoder.onnx", target)
    await registry.refresh()

    assert registry.find("tab", "2").status == "unavailable"
    assert (await answer(registry, tabular_rows))[0] == 1

    shutil.copytree(source, target, dirs_exist_ok=True)
    await registry.refresh()

    version, scores = await answer(registry, tabular_rows)
    assert version == 2
    np.testing.assert_allclose(scores, expected(trained, "tab-b", tabular_rows), rtol=1e-4, atol=1e-6)


async def test_a_removed_version_stops_serving_once_its_requests_are_done(
    models: Path, stage: Any, tabular_rows: np.ndarray
) -> None:
    publish(stage("tab-b", 2), models)
    registry = await started(models)
    with registry.lease("tab") as in_flight:
        assert in_flight.manifest.version == 2
        shutil.rmtree(models / "tab" / "2")
        await registry.refresh()
        assert registry.runtime("tab", "2") is in_flight  # one scan may fall inside a --replace's two renames
        await registry.refresh()

        with pytest.raises(ServiceError) as gone:
            registry.runtime("tab", "2")
        assert (gone.value.status, gone.value.code) == (404, "version_not_found")
        assert (await answer(registry, tabular_rows))[0] == 1
        assert len((await dataplane.score(in_flight, tabular_rows)).scores) == len(tabular_rows)
    assert in_flight.providers == []


async def test_unload_holds_across_polls_until_load(models: Path, tabular_rows: np.ndarray) -> None:
    registry = await started(models)
    await registry.unload("tab")
    await registry.refresh()

    with pytest.raises(ServiceError) as unloaded:
        registry.runtime("tab")
    assert (unloaded.value.status, unloaded.value.code) == (503, "model_unavailable")
    assert unloaded.value.message == ("model tab/1 is unloaded; POST /v2/repository/models/tab/load serves it again")
    assert registry.readiness() == (False, "no model serves: every package is broken, unloaded or gone")

    entries = await registry.load("tab")
    assert [(entry.label, entry.status) for entry in entries] == [("tab/1", "ready")]
    assert (await answer(registry, tabular_rows))[0] == 1


async def test_load_says_why_it_cannot(models: Path, stage: Any, copy_package: Any) -> None:
    copy_package("tab", models, "broken")
    (models / "broken" / "1" / "decoder.onnx").unlink()
    registry = await started(models)

    with pytest.raises(ServiceError) as unknown:
        await registry.load("nope")
    with pytest.raises(ServiceError) as broken:
        await registry.load("broken")

    assert (unknown.value.status, unknown.value.code) == (404, "model_not_found")
    assert (broken.value.status, broken.value.code) == (400, "load_failed")
    assert broken.value.message == "no version of 'broken' could be loaded: broken/1: decoder.onnx is missing"


async def test_polling_does_not_reread_unchanged_packages(
    models: Path, stage: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(stage("tab-b", 2), models)
    reads: list[str] = []
    real_read = Repository.read

    def counted(self: Repository, folder: Any) -> Any:
        reads.append(folder.label)
        return real_read(self, folder)

    monkeypatch.setattr(Repository, "read", counted)
    registry = await started(models)
    await registry.refresh()
    await registry.refresh()
    assert reads == ["tab/1", "tab/2"]

    publish(stage("tab", 2), models)
    await registry.refresh()
    assert reads == ["tab/1", "tab/2", "tab/2"]


async def test_not_ready_when_no_model_serves(models: Path, stage: Any) -> None:
    shutil.rmtree(models / "tab" / "1")
    publish(stage("tab", 1, broken=True), models)
    registry = await started(models)
    assert registry.readiness() == (False, "no model serves: every package is broken, unloaded or gone")


async def test_a_folder_back_by_the_next_scan_never_stops_serving(
    models: Path, stage: Any, tabular_rows: np.ndarray
) -> None:
    registry = await started(models)
    aside = models / "tab" / ".old-1"
    (models / "tab" / "1").rename(aside)  # what `training fit --replace` does, caught between its renames
    await registry.refresh()
    aside.rename(models / "tab" / "1")
    await registry.refresh()
    await registry.refresh()

    assert (await answer(registry, tabular_rows))[0] == 1
    assert (
        sample(registry.metrics.render().decode(), "ae_model_loads_total", model="tab", version="1", outcome="loaded")
        == 1
    )


async def test_a_storm_of_loads_and_unloads_never_fails_a_healthy_load(models: Path) -> None:
    registry = await started(models)
    storm = 40
    answers: list[list[tuple[str, str]]] = []
    failures: list[str] = []

    async def load() -> None:
        try:
            answers.append([(entry.label, entry.status) for entry in await registry.load("tab")])
        except ServiceError as exc:
            failures.append(exc.message)

    async with anyio.create_task_group() as group:
        for _ in range(storm):
            group.start_soon(load)
            group.start_soon(registry.unload, "tab")

    assert failures == []
    assert answers == [[("tab/1", "ready")]] * storm  # each load answers with the state it made itself
