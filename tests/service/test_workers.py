"""Several worker processes behind one port (service.workers), in a real `python -m service`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.service.servers import ROOT, free_port, running_process

WORKERS = ("--workers", "2", "--intra-op-threads", "1")


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def sockets(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if os.readlink(fd).startswith("socket:"))


def listening(port: int) -> int:
    """Sockets listening on the port (the kernel's table): one per worker that accepts connections."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows if row.split()[1].endswith(f":{port:04X}") and row.split()[3] == "0A")


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
        port = client.base_url.port
        assert port is not None
        assert eventually(lambda: listening(port) == 2)  # the second listens once its models have loaded
        before = {pid: sockets(pid) for pid in workers}
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


def test_a_hung_worker_is_killed_and_replaced(models_dir: Path, tmp_path: Path) -> None:
    env = {"AE_WORKER_TIMEOUT_S": "2"}
    with running_process(models_dir, tmp_path / "server.log", *WORKERS, env=env) as (process, client):
        first, second = children(process.pid)
        os.kill(first, signal.SIGSTOP)  # alive, holding its connections, answering nothing
        assert eventually(lambda: first not in children(process.pid) and len(children(process.pid)) == 2, 20)
        assert second in children(process.pid)  # the one that kept running was left alone
        port = client.base_url.port
        assert port is not None
        assert eventually(lambda: listening(port) == 2, 20)
        body = {"inputs": [[0.1, 0.2, 0.3, 0.4, 0.5]]}
        answers = [httpx.post(f"{client.base_url}/models/tab/score", json=body).status_code for _ in range(20)]
        assert answers == [200] * 20
    assert "has not run its event loop" in (tmp_path / "server.log").read_text()


def test_a_second_copy_on_the_same_port_is_refused(models_dir: Path, tmp_path: Path) -> None:
    with running_process(models_dir, tmp_path / "server.log", *WORKERS) as (_, client):
        port = str(client.base_url.port)
        command = [sys.executable, "-m", "service", "--port", port, "--models-dir", str(models_dir), *WORKERS]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode != 0
        assert f"cannot listen on 127.0.0.1:{client.base_url.port}" in result.stderr
        assert client.get("/readyz").status_code == 200


def test_killing_the_parent_outright_stops_the_workers(models_dir: Path, tmp_path: Path) -> None:
    metrics = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}  # the parent cannot clean up after a SIGKILL
    with running_process(models_dir, tmp_path / "server.log", *WORKERS, env=metrics) as (process, client):
        workers = children(process.pid)
        process.kill()
        process.wait()
        assert eventually(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers))
        with socket.socket() as again:  # the port is free for the next start
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(("127.0.0.1", client.base_url.port))


def test_metrics_folders_of_killed_runs_are_removed_at_the_next_start(models_dir: Path, tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    orphaned = Path(tempfile.gettempdir()) / f"ae-metrics-{gone.pid}-test"
    orphaned.mkdir()
    (orphaned / "counter_1.db").write_bytes(b"")
    alive = Path(tempfile.mkdtemp(prefix=f"ae-metrics-{os.getpid()}-"))  # this test's own process is alive
    try:
        with running_process(models_dir, tmp_path / "server.log", *WORKERS):
            assert not orphaned.exists()
            assert alive.exists()
    finally:
        shutil.rmtree(alive, ignore_errors=True)
        shutil.rmtree(orphaned, ignore_errors=True)


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


def test_a_stop_while_a_worker_is_being_replaced_still_stops_everything(models_dir: Path, tmp_path: Path) -> None:
    with running_process(models_dir, tmp_path / "server.log", *WORKERS) as (process, _):
        first, second = children(process.pid)
        os.kill(first, signal.SIGKILL)
        time.sleep(0.2)  # the parent is pausing before it forks a replacement
        process.terminate()
        assert process.wait(timeout=15) == 0
        assert not Path(f"/proc/{second}").exists()


def test_ctrl_c_drains_the_requests_in_flight(models_dir: Path, tmp_path: Path) -> None:
    with running_process(models_dir, tmp_path / "server.log", *WORKERS) as (process, client):
        port = client.base_url.port
        assert port is not None
        body = b'{"inputs": [[0.1, 0.2, 0.3, 0.4, 0.5]]}'
        head = "POST /models/tab/score HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        pending = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
        for connection in pending:
            connection.sendall(head.encode() + body[:10])
        time.sleep(0.3)
        # A terminal's Ctrl-C goes to the foreground process group: the parent's, which the workers left.
        assert all(os.getpgid(worker) != os.getpgid(process.pid) for worker in children(process.pid))
        process.send_signal(signal.SIGINT)
        time.sleep(0.3)
        for connection in pending:
            connection.sendall(body[10:])
        answers = [connection.recv(4096) for connection in pending]
        assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers), answers
        assert process.wait(timeout=15) == 0


def test_every_listening_worker_is_ready_once_readyz_says_so(tmp_path: Path, copy_package: Callable[..., Path]) -> None:
    models = tmp_path / "models"
    for index in range(12):  # enough loading for the workers to finish at different times
        copy_package("tab", models, f"m{index:02d}")
    with running_process(models, tmp_path / "server.log", *WORKERS) as (_, client):
        body = {"inputs": [[0.1, 0.2, 0.3, 0.4, 0.5]]}
        codes = [httpx.post(f"{client.base_url}/models/m11/score", json=body).status_code for _ in range(30)]
        assert codes == [200] * 30


def test_a_worker_that_cannot_start_stops_the_service(models_dir: Path) -> None:
    port = str(free_port())
    command = f"exec >&-; exec {sys.executable} -m service --port {port} --models-dir {models_dir} --workers 2"
    result = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr[-2000:]
