"""Against a real server: `python -m service` in a subprocess, over real HTTP."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.poll import delivered, wait_until
from tests.service.servers import reported_port, running_server

pytestmark = pytest.mark.e2e

MAX_BODY_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A uvicorn process serving `models_dir`, configured by flags and by environment."""
    log = tmp_path_factory.mktemp("e2e") / "server.log"
    with running_server(models_dir, log, env={"AE_MAX_BODY_BYTES": str(MAX_BODY_BYTES)}) as client:
        yield client


def test_serves_models_and_reports_them(server: httpx.Client) -> None:
    listing = server.get("/models").json()
    statuses = {(m["name"], m["version"]): m["status"] for m in listing["models"]}
    assert statuses[("tab", 2)] == "ready" and statuses[("zz-broken", 1)] == "unavailable"
    assert server.get("/healthz").json() == {"status": "alive"}


def test_encode_decode_and_score_over_http(server: httpx.Client, tabular_rows: np.ndarray) -> None:
    body = {"inputs": tabular_rows.tolist()}
    encoded = server.post("/models/tab/encode", json=body).json()
    decoded = server.post("/models/tab/decode", json={"latents": encoded["latents"]}).json()
    reconstructed = server.post("/models/tab/reconstruct", json=body).json()
    np.testing.assert_allclose(decoded["reconstructions"], reconstructed["reconstructions"], atol=1e-4)
    scored = server.post("/score?model=tab", json=body).json()
    assert scored["scores"] == reconstructed["scores"]


def test_png_in_and_out(server: httpx.Client) -> None:
    buffer = io.BytesIO()
    Image.new("L", (28, 28), color=128).save(buffer, format="PNG")
    files = {"file": ("x.png", buffer.getvalue(), "image/png")}
    response = server.post("/models/conv/reconstruct", files=files, headers={"accept": "image/png"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (8, 8)


def test_bad_requests_get_the_error_shape_and_the_server_keeps_serving(server: httpx.Client) -> None:
    malformed = server.post("/score?model=tab", content=b"{", headers={"content-type": "application/json"})
    too_large = server.post("/score?model=tab", content=b"1" * (MAX_BODY_BYTES + 1))
    unavailable = server.post("/models/zz-broken/score", json={"inputs": [0.0] * 5})

    assert (malformed.status_code, malformed.json()["error"]["code"]) == (400, "malformed_json")
    assert too_large.status_code == 413
    assert too_large.json() == {
        "error": {"code": "body_too_large", "message": f"the request body exceeds {MAX_BODY_BYTES} bytes"}
    }
    assert (unavailable.status_code, unavailable.json()["error"]["code"]) == (503, "model_unavailable")
    assert server.post("/score?model=tab", json={"inputs": [0.0] * 5}).status_code == 200


def test_a_heavy_upload_does_not_stall_the_event_loop(models_dir: Path, tmp_path: Path) -> None:
    with running_server(models_dir, tmp_path / "server.log") as server:  # default limits
        _probe_while_uploading(server)


def _probe_while_uploading(server: httpx.Client) -> None:
    buffer = io.BytesIO()
    Image.new("L", (2000, 2000), color=90).save(buffer, format="PNG")  # small to send, 4 Mpx to decode
    files = [("file", (f"{i}.png", buffer.getvalue(), "image/png")) for i in range(12)]
    answers: list[int] = []
    upload = threading.Thread(
        target=lambda: answers.append(server.post("/models/conv/score", files=files, timeout=60).status_code)
    )
    upload.start()
    probes = []
    with httpx.Client(base_url=server.base_url, timeout=10) as probe:
        while upload.is_alive():
            started = time.perf_counter()
            assert probe.get("/healthz").status_code == 200
            probes.append(time.perf_counter() - started)
            time.sleep(0.005)
    upload.join()
    assert answers == [200]
    assert max(probes) < 0.1, f"/healthz took {max(probes):.3f} s while images were decoded"
    assert len(probes) >= 5, "the upload finished before the probes could measure anything"


def _half_sent(port: int, path: str, declared: int, sent: bytes) -> socket.socket:
    """A connection that promises `declared` body bytes and sends only `sent`."""
    connection = socket.create_connection(("127.0.0.1", port))
    head = f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    connection.sendall(head.encode() + sent)
    return connection


def _answer(connection: socket.socket, within: float) -> bytes:
    connection.settimeout(within)
    data = b""
    try:
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = connection.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        connection.close()
    return data


def test_stalled_bodies_are_dropped_and_held_bytes_are_bounded(models_dir: Path, tmp_path: Path) -> None:
    env = {"AE_BODY_TIMEOUT_S": "1", "AE_MAX_BODY_BYTES_IN_FLIGHT": "100000"}
    # One worker: the bytes in flight are counted per worker, and the kernel picks the worker per connection.
    with running_server(models_dir, tmp_path / "server.log", "--workers", "1", env=env) as server:
        port = int(str(server.base_url).rsplit(":", 1)[1].rstrip("/"))
        started = time.monotonic()
        stalled = _answer(_half_sent(port, "/models/tab/score", 100, b'{"inputs": '), within=10)
        assert stalled.startswith(b"HTTP/1.1 408") and b'"code":"body_timeout"' in stalled
        assert time.monotonic() - started < 5

        holding = _half_sent(port, "/models/tab/score", 200_000, b" " * 80_000)  # 80 KB held, more promised
        wait_until(lambda: delivered(holding), message="the server reads the 80 KB it then holds")
        second = _answer(_half_sent(port, "/models/tab/score", 200_000, b" " * 40_000), within=10)
        assert second.startswith(b"HTTP/1.1 503") and b'"code":"overloaded"' in second and b"retry-after: 1" in second
        holding.close()
        assert server.post("/models/tab/score", json={"inputs": [0.0] * 5}).status_code == 200


def _port(server: httpx.Client) -> int:
    return int(str(server.base_url).rsplit(":", 1)[1].rstrip("/"))


def test_oversized_headers_get_431_at_once_or_trickled(models_dir: Path, tmp_path: Path) -> None:
    with running_server(models_dir, tmp_path / "server.log", "--max-header-bytes", "4096") as server:
        port = _port(server)
        at_once = socket.create_connection(("127.0.0.1", port))
        at_once.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
        answer = _answer(at_once, within=5)
        assert answer.startswith(b"HTTP/1.1 431") and b'"code":"headers_too_large"' in answer

        # A header that never ends is cut off near the limit, not buffered until the client stops.
        trickled = socket.create_connection(("127.0.0.1", port))
        trickled.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ")
        sent = 0
        try:
            while sent < 1_000_000:
                trickled.sendall(b"a" * 1000)
                sent += 1000
                time.sleep(0.001)
        except OSError:
            pass  # the server closed the connection
        assert sent < 200_000, f"{sent} header bytes accepted"
        trickled.close()

        fitting = server.get("/healthz", headers={"X-Big": "a" * 3000})
        assert fitting.status_code == 200


def test_connections_that_send_no_headers_in_time_are_closed(models_dir: Path, tmp_path: Path) -> None:
    with running_server(models_dir, tmp_path / "server.log", "--header-timeout-s", "1") as server:
        port = _port(server)
        silent = socket.create_connection(("127.0.0.1", port))
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"GET /healthz HTTP/1.1\r\n")
        started = time.monotonic()
        with pytest.raises(OSError):
            for _ in range(40):  # a header line every 0.1 s: never complete within the timeout
                slow.sendall(b"X-A: b\r\n")
                time.sleep(0.1)
        silent.settimeout(5)
        assert silent.recv(100) == b""  # closed by the server
        assert time.monotonic() - started < 4

        # The timer stops when the headers are complete: a body may take longer (its own timeout applies).
        body = b'{"inputs": [0, 0, 0, 0, 0]}'
        slow_body = _half_sent(port, "/models/tab/score", len(body), b"")
        time.sleep(1.5)
        slow_body.sendall(body)
        assert _answer(slow_body, within=5).startswith(b"HTTP/1.1 200")


def test_a_burst_of_connections_is_accepted_and_answered(server: httpx.Client) -> None:
    port = _port(server)
    burst = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
    for connection in burst:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    answers = [_answer(connection, within=10) for connection in burst]
    assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers)


def test_a_port_in_use_stops_the_start_with_a_message(models_dir: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "service", "--port", str(port), "--models-dir", str(models_dir)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_shutdown_waits_for_a_stalled_request_at_most_the_shutdown_timeout(models_dir: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "service", "--port", "0", "--models-dir", str(models_dir)]
    env = os.environ | {"AE_SHUTDOWN_TIMEOUT_S": "1", "AE_PROVIDERS": "CPUExecutionProvider"}
    with (tmp_path / "server.log").open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        port = reported_port(process, tmp_path / "server.log")
        wait_until(lambda: _ready(port), 30, "the server is ready")
        stalled = _half_sent(port, "/models/tab/score", 100, b'{"inputs": ')  # a request that never ends
        wait_until(lambda: delivered(stalled), message="the server reads the start of the request")
        process.terminate()
        started = time.monotonic()
        assert process.wait(timeout=15) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it caught
        assert time.monotonic() - started < 5  # the 1 s budget, and the lifespan's own shutdown
        stalled.close()
    finally:
        process.kill()


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _chunked(path: str, body: bytes, trailers: bytes, headers: bytes = b"") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
    return head.encode() + headers + b"\r\n" + b"%x\r\n" % len(body) + body + b"\r\n0\r\n" + trailers


def test_trailers_never_become_headers_and_are_bounded(models_dir: Path, tmp_path: Path) -> None:
    env = {"AE_API_KEYS": "sekret"}
    with running_server(models_dir, tmp_path / "server.log", env=env) as server:
        port = _port(server)
        body = b'{"inputs": [0, 0, 0, 0, 0]}'
        keyed = socket.create_connection(("127.0.0.1", port))
        keyed.sendall(_chunked("/models/tab/score", body, b"X-API-Key: sekret\r\n\r\n"))
        assert _answer(keyed, within=5).startswith(b"HTTP/1.1 401")  # a trailer is not a key

        endless = socket.create_connection(("127.0.0.1", port))
        endless.sendall(_chunked("/models/tab/score", body, b"", b"X-API-Key: sekret\r\n"))
        sent = 0
        try:
            while sent < 2_000_000:
                endless.sendall(b"X-T: y\r\n" * 1000)
                sent += 8000
                time.sleep(0.002)  # paced, so the bytes reach the server instead of piling up in kernel buffers
        except OSError:
            pass  # the server dropped the connection
        assert sent < 500_000, f"{sent} bytes of trailers accepted"
        endless.close()
        assert server.get("/healthz").status_code == 200


def test_a_client_that_stops_reading_is_dropped_after_the_send_timeout(models_dir: Path, tmp_path: Path) -> None:
    with running_server(models_dir, tmp_path / "server.log", "--send-timeout-s", "1") as server:
        port = _port(server)
        reader = socket.socket()
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.connect(("127.0.0.1", port))
        request = json.dumps({"inputs": np.zeros((1024, 8, 8)).tolist()}).encode()
        head = "POST /models/conv/reconstruct HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        one = head.encode() + f"Content-Length: {len(request)}\r\n\r\n".encode() + request
        reader.settimeout(20)  # without the send timeout, sendall blocks: the server stops reading from it
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):  # dropped while still sending
            reader.sendall(one * 20)  # twenty answers of about 1 MB each, none read for now
        log = tmp_path / "server.log"
        wait_until(lambda: "dropped a connection that stopped reading" in log.read_text(), 20, "the server drops it")
        reader.settimeout(10)
        received = b""
        try:
            while chunk := reader.recv(1 << 20):
                received += chunk
        except OSError:
            pass  # reset by the server
        reader.close()
        assert received.count(b"HTTP/1.1 200") < 20  # dropped before all of it was sent
        assert server.get("/healthz").status_code == 200


def test_an_oversized_body_is_refused_before_100_continue(server: httpx.Client) -> None:
    connection = socket.create_connection(("127.0.0.1", _port(server)))
    connection.sendall(
        b"POST /models/tab/score HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1)
    )
    # Read to the end: the server closes after the answer (kept open, it would read and drop whatever the
    # client sends), so this ends well before the timeout.
    connection.settimeout(5)
    answer = b""
    while chunk := connection.recv(65536):
        answer += chunk
    connection.close()
    assert answer.startswith(b"HTTP/1.1 413") and b"100 Continue" not in answer
    assert b"connection: close" in answer.lower()
