"""Worker processes on gunicorn's arbiter (service.workers), in a real `python -m service`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.service.scrape import sample
from tests.service.servers import ROOT, listening, running_process

pytestmark = pytest.mark.e2e

WORKERS = ("--workers", "2", "--intra-op-threads", "1")
SCORE = {"inputs": [[0.1, 0.2, 0.3, 0.4, 0.5]]}


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def sockets(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if os.readlink(fd).startswith("socket:"))


def eventually(check: Callable[[], bool], within: float = 20) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def port_of(client: httpx.Client) -> int:
    port = client.base_url.port
    assert port is not None
    return port


def scores(client: httpx.Client, count: int) -> list[int]:
    """Status codes of `count` requests, each on a new connection (so the kernel picks a worker for each)."""
    url = f"{client.base_url}/models/tab/score"
    return [httpx.post(url, json=SCORE).status_code for _ in range(count)]


class Load:
    """Requests from several threads until stopped: half on keep-alive connections, half each on a new one."""

    def __init__(self, client: httpx.Client, threads: int = 4) -> None:
        self.url = f"{client.base_url}/models/tab/score"
        self.outcomes: Counter[str] = Counter()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(index % 2 == 0,)) for index in range(threads)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join()

    def _run(self, keep_alive: bool) -> None:
        limits = httpx.Limits(max_keepalive_connections=1 if keep_alive else 0)
        with httpx.Client(limits=limits, timeout=30) as client:
            while not self.stopping.is_set():
                try:
                    self.outcomes[str(client.post(self.url, json=SCORE).status_code)] += 1
                except httpx.HTTPError as error:
                    self.outcomes[type(error).__name__] += 1


def test_connections_are_spread_over_the_workers(models_dir: Path, tmp_path: Path) -> None:
    with running_process(models_dir, tmp_path / "server.log", *WORKERS) as (process, client):
        workers = children(process.pid)
        assert len(workers) == 2
        port = port_of(client)
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


def test_sighup_replaces_the_workers_one_at_a_time_without_a_failed_request(models_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with running_process(models_dir, log, *WORKERS) as (process, client):
        port = port_of(client)
        assert eventually(lambda: listening(port) == 2)
        old = set(children(process.pid))
        with Load(client) as load:
            assert eventually(lambda: load.outcomes.total() > 20)
            process.send_signal(signal.SIGHUP)
            # Never fewer than two listening workers: the fresh one listens before the old one stops.
            fewest = 2
            deadline = time.monotonic() + 60
            while "every worker replaced" not in log.read_text() and time.monotonic() < deadline:
                fewest = min(fewest, listening(port))
                time.sleep(0.01)
            served = load.outcomes.total()
            assert eventually(lambda: load.outcomes.total() > served + 20)  # the new workers serve
        assert "every worker replaced" in log.read_text()
        assert set(load.outcomes) == {"200"}, load.outcomes
        assert fewest == 2
        workers = set(children(process.pid))
        assert len(workers) == 2 and not workers & old
        assert client.get("/readyz").status_code == 200


def test_ttin_adds_a_worker_and_ttou_removes_one(models_dir: Path, tmp_path: Path) -> None:
    with running_process(models_dir, tmp_path / "server.log", *WORKERS) as (process, client):
        port = port_of(client)
        first = children(process.pid)
        process.send_signal(signal.SIGTTIN)
        assert eventually(lambda: len(children(process.pid)) == 3 and listening(port) == 3)
        process.send_signal(signal.SIGTTOU)
        assert eventually(lambda: len(children(process.pid)) == 2 and listening(port) == 2)
        assert len(set(first) & set(children(process.pid))) == 1  # the oldest went
        assert scores(client, 20) == [200] * 20


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_are_recycled_after_max_requests_and_serving_goes_on(
    models_dir: Path, tmp_path: Path, workers: int
) -> None:
    env = {"AE_MAX_REQUESTS": "15", "AE_MAX_REQUESTS_JITTER": "5"}
    flags = ("--workers", str(workers), "--intra-op-threads", "1")
    with running_process(models_dir, tmp_path / "server.log", *flags, env=env) as (process, client):
        first = set(children(process.pid))
        answers = scores(client, 20 * workers + 1)  # at least one worker answers more than 20
        assert eventually(lambda: len(children(process.pid)) == workers and not first <= set(children(process.pid)))
        answers += scores(client, 20)
    assert answers == [200] * (20 * workers + 21)
    assert "has answered max-requests requests; replacing it" in (tmp_path / "server.log").read_text()


def test_a_worker_that_dies_is_replaced_and_the_service_keeps_answering(models_dir: Path, tmp_path: Path) -> None:
    with running_process(models_dir, tmp_path / "server.log", *WORKERS) as (process, client):
        first, second = children(process.pid)
        os.kill(first, signal.SIGKILL)
        assert eventually(lambda: len(children(process.pid)) == 2 and first not in children(process.pid))
        assert second in children(process.pid)
        assert eventually(lambda: listening(port_of(client)) == 2)
        assert scores(client, 20) == [200] * 20
    log = (tmp_path / "server.log").read_text()
    assert f"Worker (pid:{first}) was sent SIGKILL" in log
    assert f"worker {first} exited unasked; replacing it in 1 s" in log


def test_the_port_stays_held_while_every_worker_is_replaced(models_dir: Path, tmp_path: Path) -> None:
    with running_process(models_dir, tmp_path / "server.log", *WORKERS) as (process, client):
        workers = children(process.pid)
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        assert eventually(lambda: not any(Path(f"/proc/{pid}/status").exists() for pid in workers))
        with socket.socket() as other, pytest.raises(OSError, match="Address already in use"):
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            other.bind(("127.0.0.1", port_of(client)))
        assert eventually(lambda: _ready(client))


def test_a_hung_worker_is_aborted_and_replaced(models_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    env = {"AE_WORKER_TIMEOUT_S": "2"}
    with running_process(models_dir, log, *WORKERS, env=env) as (process, client):
        first, second = children(process.pid)
        os.kill(first, signal.SIGSTOP)  # alive, holding its connections, answering nothing
        assert eventually(lambda: f"WORKER TIMEOUT (pid:{first})" in log.read_text())
        assert eventually(lambda: first not in children(process.pid) and len(children(process.pid)) == 2)
        assert second in children(process.pid)  # the one that kept running was left alone
        assert eventually(lambda: listening(port_of(client)) == 2)
        assert scores(client, 20) == [200] * 20


def test_sigabrt_writes_the_workers_tracebacks_to_the_log(models_dir: Path, tmp_path: Path) -> None:
    """What the arbiter sends a hung worker (above): a stopped process cannot show its tracebacks."""
    log = tmp_path / "server.log"
    with running_process(models_dir, log, *WORKERS) as (process, client):
        first, _ = children(process.pid)
        os.kill(first, signal.SIGABRT)
        assert eventually(lambda: first not in children(process.pid) and len(children(process.pid)) == 2)
        assert eventually(lambda: _ready(client))
    text = log.read_text()
    assert "Fatal Python error: Aborted" in text
    assert "most recent call first" in text and 'File "' in text and "uvicorn/server.py" in text


def test_a_second_copy_on_the_same_port_is_refused(models_dir: Path, tmp_path: Path) -> None:
    with running_process(models_dir, tmp_path / "server.log", *WORKERS) as (_, client):
        port = str(port_of(client))
        command = [sys.executable, "-m", "service", "--port", port, "--models-dir", str(models_dir), *WORKERS]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode != 0
        assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
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
            again.bind(("127.0.0.1", port_of(client)))


def test_metrics_are_summed_over_the_workers_and_outlive_them(models_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with running_process(models_dir, log, *WORKERS) as (process, client):
        assert eventually(lambda: listening(port_of(client)) == 2)
        assert scores(client, 30) == [200] * 30

        def counted() -> float:
            text = httpx.get(f"{client.base_url}/metrics").text
            return sample(text, "ae_requests_total", model="tab", operation="score")

        assert {counted() for _ in range(10)} == {30.0}  # whichever worker answers
        process.send_signal(signal.SIGHUP)
        assert eventually(lambda: "every worker replaced" in log.read_text(), 60)
        assert counted() == 30.0  # the replaced workers' counts stay


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
        assert process.wait(timeout=20) == 0
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
        assert eventually(lambda: first not in children(process.pid))
        process.terminate()
        assert process.wait(timeout=20) == 0
        assert not Path(f"/proc/{second}").exists()


def test_ctrl_c_drains_the_requests_in_flight(models_dir: Path, tmp_path: Path) -> None:
    with running_process(models_dir, tmp_path / "server.log", *WORKERS) as (process, client):
        port = port_of(client)
        assert eventually(lambda: listening(port) == 2)
        body = b'{"inputs": [[0.1, 0.2, 0.3, 0.4, 0.5]]}'
        head = "POST /models/tab/score HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        pending = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
        for connection in pending:
            connection.sendall(head.encode() + body[:10])
        assert eventually(lambda: sum(sockets(pid) for pid in children(process.pid)) >= 8 + 2)
        for pid in (process.pid, *children(process.pid)):  # a terminal's Ctrl-C reaches the whole group
            os.kill(pid, signal.SIGINT)
        assert eventually(lambda: "Handling signal: int" in (tmp_path / "server.log").read_text())
        for connection in pending:
            connection.sendall(body[10:])
        answers = [connection.recv(4096) for connection in pending]
        assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers), answers
        assert process.wait(timeout=20) == 0


def test_every_listening_worker_is_ready_once_readyz_says_so(tmp_path: Path, copy_package: Callable[..., Path]) -> None:
    models = tmp_path / "models"
    for index in range(12):  # enough loading for the workers to finish at different times
        copy_package("tab", models, f"m{index:02d}")
    with running_process(models, tmp_path / "server.log", *WORKERS) as (_, client):
        url = f"{client.base_url}/models/m11/score"
        codes = [httpx.post(url, json=SCORE).status_code for _ in range(30)]
        assert codes == [200] * 30


def test_a_worker_that_cannot_start_stops_the_service(models_dir: Path) -> None:
    # Each worker sets up its trace exporter as it starts (service.tracing): one that does not exist stops it.
    command = [sys.executable, "-m", "service", "--port", "0", "--models-dir", str(models_dir), "--workers", "2"]
    env = os.environ | {"OTEL_TRACES_EXPORTER": "no-such-exporter"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "Worker failed to boot" in result.stderr
    assert "OTEL_TRACES_EXPORTER: unknown exporter 'no-such-exporter'" in result.stderr
