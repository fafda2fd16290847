"""Bodies built to freeze a worker or swell its memory, against a real server with one worker: each is
refused with its 4xx while /healthz keeps answering, and the worker gives the memory back afterwards.

The margins are generous (a busy 2-core machine): before the body readers checked their limits as bytes
arrived, these bodies held the event loop for 3 to 15 s and left the worker at ~1 GB."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from tests.service.conftest import IMAGE_SHAPE
from tests.service.servers import running_process

pytestmark = pytest.mark.e2e

# The target is 100 ms; a loaded CI machine adds its own pauses to any probe.
MAX_STALL_S = 0.5
MAX_RSS_GROWTH = 50 * 1024 * 1024
BIG = 15 * 1024 * 1024


def rows_body(total: int) -> bytes:
    """{"inputs": [[0], [0], ...]} of about `total` bytes: a million one-value rows and more."""
    return b'{"inputs": [' + b",".join([b"[0]"] * (total // 4)) + b"]}"


def padded_body(row: list[float]) -> bytes:
    """A valid row with an unknown field of 100,000 zeros (about 200 KB)."""
    return orjson.dumps({"inputs": [row], "pad": [0] * 100_000})


def padded_image() -> bytes:
    """The same for the image model, whose rows allow more numbers (1,024 rows of 64 values): refused by the
    field's name, before its value is read."""
    return orjson.dumps({"inputs": [[0] * math.prod(IMAGE_SHAPE)], "pad": [0] * 60_000})


def v2_many_inputs(total: int) -> bytes:
    tensor = b'{"name":"x","shape":[1],"datatype":"FP32","data":[0]}'
    return b'{"inputs":[' + b",".join([tensor] * (total // (len(tensor) + 1))) + b"]}"


def v2_padded_parameters() -> bytes:
    """A valid image row with a parameter of 60,000 zeros: refused for being a list, before it is read."""
    tensor = {"name": "x", "shape": [1, *IMAGE_SHAPE], "datatype": "FP32", "data": [0] * math.prod(IMAGE_SHAPE)}
    return orjson.dumps({"inputs": [tensor], "parameters": {"pad": [0] * 60_000}})


HOSTILE = {
    "JSON rows": ("/models/tab/score", rows_body(BIG), "application/json", 413),
    "JSON pad": ("/models/tab/score", None, "application/json", 413),
    "JSON pad, image model": ("/models/conv/score", padded_image(), "application/json", 422),
    "CSV lines": ("/models/tab/score", b"1\n" * (BIG // 2), "text/csv", 413),
    "V2 inputs": ("/v2/models/tab/infer", v2_many_inputs(BIG), "application/json", 413),
    "V2 parameters": ("/v2/models/conv/infer", v2_padded_parameters(), "application/json", 400),
}


@pytest.fixture(scope="module")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, httpx.Client]]:
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    with running_process(models_dir, log, "--workers", "1", "--intra-op-threads", "1") as (process, client):
        yield process.pid, client


def body_of(name: str, row: list[float]) -> tuple[str, bytes, str, int]:
    path, body, media, status = HOSTILE[name]
    if body is None:
        body = padded_body(row)
    return path, body, media, status


class Probe(threading.Thread):
    """GETs /healthz every 20 ms on its own connection and keeps the slowest answer's time."""

    def __init__(self, base_url: str) -> None:
        super().__init__(daemon=True)
        self.base_url, self.slowest, self.stop = base_url, 0.0, threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                assert client.get("/healthz").status_code == 200
                self.slowest = max(self.slowest, time.perf_counter() - started)
                time.sleep(0.02)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_no_body_holds_the_event_loop(server: tuple[int, httpx.Client], tabular_rows: np.ndarray, name: str) -> None:
    _, client = server
    path, body, media, status = body_of(name, tabular_rows[0].tolist())
    probe = Probe(str(client.base_url))
    probe.start()
    try:
        for _ in range(3):
            answer = client.post(path, content=body, headers={"content-type": media}, timeout=60)
            assert answer.status_code == status, answer.text
    finally:
        probe.stop.set()
        probe.join()
    assert probe.slowest < MAX_STALL_S, f"/healthz took {probe.slowest:.3f} s while {name} bodies were refused"
    assert client.post("/models/tab/score", json={"inputs": tabular_rows.tolist()}).status_code == 200


def worker_rss(arbiter: int) -> int:
    """Resident bytes of the arbiter's one worker process."""
    [worker] = Path(f"/proc/{arbiter}/task/{arbiter}/children").read_text().split()
    for line in Path(f"/proc/{worker}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_refused_bodies_leave_no_memory_behind(server: tuple[int, httpx.Client], tabular_rows: np.ndarray) -> None:
    pid, client = server
    row = tabular_rows[0].tolist()
    bodies = [
        ("/models/tab/score", orjson.dumps({"inputs": [row] * 2000, "pad": " " * (BIG - 100_000)}), "application/json"),
        ("/models/tab/score", HOSTILE["CSV lines"][1], "text/csv"),
        ("/v2/models/tab/infer", HOSTILE["V2 inputs"][1], "application/json"),
    ]
    for path, body, media in bodies:  # the first of each kind sets up what any request of it uses
        client.post(path, content=body, headers={"content-type": media})
    before = worker_rss(pid)
    peaks = []
    for _ in range(200):
        for path, body, media in bodies:
            answer = client.post(path, content=body, headers={"content-type": media}, timeout=60)
            assert 400 <= answer.status_code < 500, answer.text
        peaks.append(worker_rss(pid))
    after = worker_rss(pid)
    assert after - before < MAX_RSS_GROWTH, f"RSS {before >> 20} -> {after >> 20} MB (peak {max(peaks) >> 20} MB)"
