"""Several worker processes behind one port (service.workers), in a real `python -m service`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.service.servers import ROOT, running_process

WORKERS = ("--workers", "2", "--intra-op-threads", "1")


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def sockets(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if os.readlink(fd).startswith("socket:"))


def eventually(check: Callable[[], bool], within: float = 10) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_connections_are_spread_over_the_workers(models_dir: Path, tmp_path: Path) -> None:
    with running_process(models_dir, tmp_path / "server.log", *WORKERS) as (process, client):
        workers = children(process.pid)
        assert len(workers) == 2
        before = {pid: sockets(pid) for pid in workers}
        port = client.base_url.port
        assert port is not None
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(64)]
        for connection in held:
            connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        for connection in held:
            assert connection.recv(4096).startswith(b"HTTP/1.1 200")
        # The kernel hashes connections over the workers' sockets: 64 split far from 64-0.
        gained = {pid: sockets(pid) - before[pid] for pid in workers}
        assert sum(gained.values()) == 64
        assert min(gained.values()) >= 12, gained
        for connection in held:
            connection.close()


def test_a_worker_that_dies_is_replaced_and_the_service_keeps_answering(models_dir: Path, tmp_path: Path) -> None:
    with running_process(models_dir, tmp_path / "server.log", *WORKERS) as (process, client):
        first, second = children(process.pid)
        os.kill(first, signal.SIGKILL)
        assert eventually(lambda: len(children(process.pid)) == 2 and first not in children(process.pid))
        assert second in children(process.pid)
        assert eventually(lambda: all(_ready(client) for _ in range(20)))
        body = {"inputs": [[0.1, 0.2, 0.3, 0.4, 0.5]]}
        answers = [httpx.post(f"{client.base_url}/models/tab/score", json=body).status_code for _ in range(20)]
        assert answers == [200] * 20
    assert "starting another" in (tmp_path / "server.log").read_text()


def test_a_second_copy_on_the_same_port_is_refused(models_dir: Path, tmp_path: Path) -> None:
    with running_process(models_dir, tmp_path / "server.log", *WORKERS) as (_, client):
        port = str(client.base_url.port)
        command = [sys.executable, "-m", "service", "--port", port, "--models-dir", str(models_dir), *WORKERS]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode != 0
        assert f"cannot listen on 127.0.0.1:{client.base_url.port}" in result.stderr
        assert client.get("/readyz").status_code == 200


def test_killing_the_parent_outright_stops_the_workers(models_dir: Path, tmp_path: Path) -> None:
    with running_process(models_dir, tmp_path / "server.log", *WORKERS) as (process, client):
        workers = children(process.pid)
        process.kill()
        process.wait()
        assert eventually(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers))
        with socket.socket() as again:  # the port is free for the next start
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(("127.0.0.1", client.base_url.port))


def test_sigterm_drains_every_worker_and_exits_cleanly(models_dir: Path, tmp_path: Path) -> None:
    with running_process(models_dir, tmp_path / "server.log", *WORKERS) as (process, _):
        workers = children(process.pid)
        process.terminate()
        assert process.wait(timeout=15) == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    log = (tmp_path / "server.log").read_text()
    assert log.count("Application shutdown complete") == 2


def _ready(client: httpx.Client) -> bool:
    try:
        return client.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False
