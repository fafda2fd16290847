"""`python -m service` in a subprocess, over real HTTP: started, waited for, stopped."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
# The arbiter's line naming the port it holds (service.workers.PortGuard).
LISTENING_AT = re.compile(rb"Listening at: http://(?:\[[^\]]*\]|[^:/\s]+):(\d+)")


def free_port() -> int:
    """A port nothing listens on, for a test that needs one no server takes."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reported_port(process: subprocess.Popen[bytes], log: Path, within: float = 30) -> int:
    """The port a `python -m service --port 0` took, from its log."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if found := LISTENING_AT.search(log.read_bytes()):
            return int(found[1])
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()}")
        time.sleep(0.05)
    pytest.fail(f"the server named no port within {within} s:\n{log.read_text()}")


@contextmanager
def running_server(
    models_dir: Path, log: Path, *flags: str, env: dict[str, str] | None = None, ready_within: float = 30
) -> Iterator[httpx.Client]:
    """A uvicorn process serving `models_dir` (CPU only), ready; its output goes to `log`; stopped at the end."""
    with running_process(models_dir, log, *flags, env=env, ready_within=ready_within) as (_, client):
        yield client


@contextmanager
def running_process(
    models_dir: Path,
    log: Path,
    *flags: str,
    env: dict[str, str] | None = None,
    ready_within: float = 30,
    wrap: Callable[[list[str]], list[str]] = list,
) -> Iterator[tuple[subprocess.Popen[bytes], httpx.Client]]:
    """running_server, with the process too. The server takes a free port (--port 0) and names it in its log.
    `wrap` turns the command into the one run (e.g. under setpriv)."""
    environment = os.environ | {"AE_PROVIDERS": "CPUExecutionProvider"} | (env or {})
    command = wrap([sys.executable, "-m", "service", "--port", "0", "--models-dir", str(models_dir), *flags])
    # A file, not a pipe: nobody reads a pipe while the tests run, and a full pipe would block the server.
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT)
    try:
        port = reported_port(process, log, ready_within)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            _wait_until_ready(client, process, log, ready_within)
            _wait_until_listening(_workers(flags), port, process, log, ready_within)
            yield process, client
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def listening(port: int) -> int:
    """Sockets listening on the port (the kernel's table): one per worker that accepts connections."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows if row.split()[1].endswith(f":{port:04X}") and row.split()[3] == "0A")


def _workers(flags: tuple[str, ...]) -> int:
    return int(flags[flags.index("--workers") + 1]) if "--workers" in flags else 1


def _wait_until_listening(workers: int, port: int, process: subprocess.Popen[bytes], log: Path, within: float) -> None:
    # /readyz answers from whichever worker is up; each worker binds its own socket (SO_REUSEPORT) only once
    # its models have loaded, and until then the kernel hands every connection to the others.
    deadline = time.monotonic() + within
    while listening(port) < workers:
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{listening(port)} of {workers} workers listen after {within} s:\n{log.read_text()}")
        time.sleep(0.05)


def _wait_until_ready(client: httpx.Client, process: subprocess.Popen[bytes], log: Path, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"the server did not become ready within {within} s:\n{log.read_text()}")
