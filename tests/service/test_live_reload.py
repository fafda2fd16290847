"""Publishing while clients are served: a real `python -m service --reload-interval` process, clients scoring
without pause, and the packages published, broken, changed, half-copied, removed, unloaded and loaded
under them. Not one request may fail, and the answers must switch to each new package's numbers."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.service.reference import torch_reference
from tests.service.registries import publish
from tests.service.scrape import sample, samples
from tests.service.servers import running_server

pytestmark = pytest.mark.e2e

INTERVAL = 0.2
ADMIN_KEY = "test-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@dataclass
class Clients:
    """Threads scoring `rows` on /models/tab/score (no version: the default) until stopped."""

    base_url: str
    rows: np.ndarray
    identify: Callable[[list[float]], str]
    answers: list[tuple[int, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            while not self.stop.is_set():
                try:
                    response = client.post("/models/tab/score", json={"inputs": self.rows.tolist()})
                except httpx.TransportError as exc:
                    self.failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code} {response.text}")
                    continue
                body = response.json()
                self.answers.append((body["version"], self.identify(body["scores"])))

    def readiness(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            while not self.stop.is_set():
                response = client.get("/readyz")
                if response.status_code != 200:
                    self.failures.append(f"/readyz {response.status_code} {response.text}")
                time.sleep(0.02)


def until(condition: Callable[[], bool], what: str, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within} s: {what}")
        time.sleep(0.05)


@pytest.fixture
def live(tmp_path: Path, copy_package: Any) -> Iterator[tuple[httpx.Client, Path]]:
    models = tmp_path / "models"
    copy_package("tab", models, "tab", version=1)
    copy_package("tab", models, "side", version=1)
    flags = ("--reload-interval", str(INTERVAL), "--intra-op-threads", "1")
    with running_server(models, tmp_path / "server.log", *flags, env={"AE_ADMIN_KEYS": ADMIN_KEY}) as client:
        yield client, models


def test_publish_break_change_remove_unload_and_load_without_a_failed_request(
    live: tuple[httpx.Client, Path], copy_package: Any, trained: Path, tabular_rows: np.ndarray, tmp_path: Path
) -> None:
    server, models = live
    references = {source: torch_reference(trained / source / "1", tabular_rows)[1] for source in ("tab", "tab-b")}

    def identify(scores: list[float]) -> str:
        """Which trained package's PyTorch model gives these scores (within float32 rounding)."""
        matches = [name for name, want in references.items() if np.allclose(scores, want, rtol=1e-4, atol=1e-6)]
        return matches[0] if len(matches) == 1 else f"no package scores {scores}"

    def staged(source: str, version: int, broken: bool = False) -> Path:
        folder = copy_package(source, tmp_path / f"scratch-{source}-{version}-{broken}", "tab", version=version)
        if broken:
            (folder / "scorer.onnx").write_bytes(b"not an onnx graph")
        return folder

    def latest() -> tuple[int, str]:
        body = server.post("/models/tab/score", json={"inputs": tabular_rows.tolist()}).json()
        return body["version"], identify(body["scores"])

    def status(version: int, model: str = "tab") -> int | str:
        response = server.get(f"/models/{model}/versions/{version}")
        return response.json()["status"] if response.status_code == 200 else response.status_code

    markers = iter(range(1, 100))

    def polled() -> None:
        """Returns once the service has polled the folder since the call: a poll found a package published
        now, a version of a model of its own ("marker"), and looked at every other folder on the way."""
        version = next(markers)
        publish(copy_package("tab", tmp_path / f"scratch-marker-{version}", "marker", version=version), models)
        until(lambda: status(version, "marker") == "ready", f"a poll finds marker v{version}")

    clients = Clients(str(server.base_url), tabular_rows, identify)
    threads = [threading.Thread(target=clients.run) for _ in range(4)] + [threading.Thread(target=clients.readiness)]
    for thread in threads:
        thread.start()

    def clients_saw(answer: tuple[int, str]) -> None:
        # Each state is held until the client threads have met it too, however slow the machine.
        until(lambda: answer in set(clients.answers), f"the clients get {answer}")

    try:
        assert latest() == (1, "tab")
        clients_saw((1, "tab"))

        publish(staged("tab-b", 2), models)
        until(lambda: latest() == (2, "tab-b"), "a new version serves with its own numbers")
        clients_saw((2, "tab-b"))

        publish(staged("tab", 3, broken=True), models)
        until(lambda: status(3) == "unavailable", "a broken version is listed as unavailable")
        assert latest() == (2, "tab-b")

        publish(staged("tab", 2), models)  # version 2 retrained: same folder, other files
        until(lambda: latest() == (2, "tab"), "a changed package serves its new numbers")
        clients_saw((2, "tab"))

        half, source = models / "tab" / "4", staged("tab-b", 4)
        half.mkdir()
        shutil.copy(source / "manifest.json", half)
        until(lambda: status(4) == "unavailable", "a half-copied folder is seen and refused")
        polled()
        assert latest() == (2, "tab")
        shutil.copytree(source, half, dirs_exist_ok=True)
        until(lambda: latest() == (4, "tab-b"), "the completed copy serves")
        clients_saw((4, "tab-b"))

        shutil.rmtree(half)
        until(lambda: latest() == (2, "tab"), "a removed version stops serving")
        assert status(4) == 404
        shutil.rmtree(models / "tab" / "3")
        until(lambda: status(3) == 404, "a removed broken version is gone")

        _repository_api_unloads_and_loads(server, polled)
    finally:
        clients.stop.set()
        for thread in threads:
            thread.join(timeout=30)

    assert clients.failures == []
    assert len(clients.answers) > 200, "the clients must have been scoring throughout"
    seen = set(clients.answers)
    assert {(1, "tab"), (2, "tab-b"), (2, "tab"), (4, "tab-b")} <= seen
    assert seen <= {(1, "tab"), (2, "tab-b"), (2, "tab"), (4, "tab-b")}

    metrics = server.get("/metrics").text
    assert sample(metrics, "ae_model_loads_total", model="tab", version="3", outcome="failed") >= 1
    assert sample(metrics, "ae_model_loads_total", model="tab", version="2", outcome="loaded") == 2
    assert sample(metrics, "ae_model_default_version", model="tab") == 2


def _repository_api_unloads_and_loads(server: httpx.Client, polled: Callable[[], None]) -> None:
    row = {"inputs": [3.0] * 5}
    refused = server.post("/v2/repository/models/side/unload")
    assert refused.status_code == 401
    assert refused.json() == {"error": "send an admin key as `Authorization: Bearer KEY`"}  # the protocol's shape
    assert refused.headers["www-authenticate"] == "Bearer"
    wrong = server.post("/v2/repository/models/side/unload", headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401

    assert server.post("/v2/repository/models/side/unload", headers=ADMIN).status_code == 200
    unloaded = server.post("/models/side/score", json=row)
    assert (unloaded.status_code, unloaded.json()["error"]["code"]) == (503, "model_unavailable")
    polled()  # a poll leaves an unloaded model alone
    assert server.post("/models/side/score", json=row).status_code == 503
    index = server.post("/v2/repository/index", headers=ADMIN, json={}).json()
    assert {
        "name": "side",
        "version": "1",
        "state": "UNAVAILABLE",
        "reason": "unloaded through the repository API",
    } in index
    assert all(
        row["name"] != "side" for row in server.post("/v2/repository/index", headers=ADMIN, json={"ready": True}).json()
    )

    loaded = server.post("/v2/repository/models/side/load", headers=ADMIN)
    assert loaded.status_code == 200
    assert loaded.json()["versions"] == [{"name": "side", "version": "1", "state": "READY", "reason": ""}]
    assert server.post("/models/side/score", json=row).status_code == 200
    missing = server.post("/v2/repository/models/nope/load", headers=ADMIN)
    assert (missing.status_code, missing.json()) == (404, {"error": "no package of model 'nope' in the models folder"})


def test_metrics_add_up_across_workers(tmp_path: Path, copy_package: Any) -> None:
    models = tmp_path / "models"
    copy_package("tab", models, "tab")
    flags = ("--workers", "2", "--intra-op-threads", "1", "--reload-interval", "0")
    with running_server(models, tmp_path / "server.log", *flags, ready_within=60) as server:
        for _ in range(40):
            assert server.post("/models/tab/score", json={"inputs": [3.0] * 5}).status_code == 200
        text = server.get("/metrics").text
    assert sample(text, "ae_requests_total", model="tab", operation="score") == 40
    pids = {dict(labels).get("pid") for _, labels in samples(text)}
    assert pids == {None}  # summed over the workers, not one series per process
