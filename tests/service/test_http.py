"""service.http's contract, over a real socket: GuardedHttpTools' header limit (431, whether the headers come
at once or in pieces; 400 for a request httptools cannot parse) and dropped trailers, and GreedyAcceptServer
accepting every pending connection in one go. These extend uvicorn's internals (uvicorn is pinned exactly):
the day those change, this fails."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn

from service.http import GreedyAcceptServer, guarded_protocol

MAX_HEADER_BYTES = 4096


async def echo_app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """Answers with the header names the request carries once its whole body is read, and the body's size."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    answer = orjson.dumps({"headers": sorted(name.decode() for name, _ in scope["headers"]), "body": len(body)})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


class Running:
    def __init__(self, server: _LoopKeeping, thread: threading.Thread) -> None:
        self.server, self.thread = server, thread

    @property
    def port(self) -> int:
        return int(self.server._listeners[0].getsockname()[1])

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.server.loop


@pytest.fixture
def running() -> Iterator[Running]:
    config = uvicorn.Config(
        echo_app,
        host="127.0.0.1",
        port=0,
        loop="asyncio",
        http=guarded_protocol(MAX_HEADER_BYTES, header_timeout_s=5.0, send_timeout_s=5.0),
        log_level="warning",
    )
    server = _LoopKeeping(config)
    thread = threading.Thread(target=server.run)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.listening and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.listening
    yield Running(server, thread)
    server.should_exit = True
    thread.join(timeout=10)


class _LoopKeeping(GreedyAcceptServer):
    """Remembers its event loop, for the test to schedule work on it."""

    loop: asyncio.AbstractEventLoop

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets)


def exchange(port: int, *pieces: bytes) -> bytes:
    """Sends the pieces one after another (until the server closes); the whole answer (until the server
    closes or 2 s pass quietly)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        try:
            for piece in pieces:
                connection.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before the rest was sent
        connection.settimeout(2)
        answer = b""
        try:
            while chunk := connection.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and _complete(answer):
                    break
        except TimeoutError:
            pass
        return answer


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def request(headers: bytes = b"", path: str = "/") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n".encode() + headers + b"\r\n"


def test_headers_within_the_limit_pass(running: Running) -> None:
    header = b"X-Pad: " + b"a" * (MAX_HEADER_BYTES - 200) + b"\r\n"
    answer = exchange(running.port, request(header))
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert "x-pad" in orjson.loads(answer.partition(b"\r\n\r\n")[2])["headers"]


@pytest.mark.parametrize("piece", [None, 100, 1], ids=["at-once", "in-100-byte-pieces", "a-byte-at-a-time"])
def test_headers_over_the_limit_are_refused_with_431(running: Running, piece: int | None) -> None:
    whole = request(b"X-Pad: " + b"a" * MAX_HEADER_BYTES + b"\r\n")
    if piece == 1:
        whole = whole[: MAX_HEADER_BYTES + 600]  # enough bytes to pass the limit; a byte per send is slow
    pieces = [whole] if piece is None else [whole[i : i + piece] for i in range(0, len(whole), piece)]
    answer = exchange(running.port, *pieces)
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large"), answer[:200]
    body = orjson.loads(answer.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == "headers_too_large"


def test_a_request_that_cannot_be_parsed_gets_400(running: Running) -> None:
    answer = exchange(running.port, b"NOT HTTP AT ALL\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]


def chunked(trailers: bytes) -> bytes:
    head = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + b"5\r\nhello\r\n0\r\n" + trailers + b"\r\n"


def test_trailers_are_dropped(running: Running) -> None:
    """A trailing X-API-Key must not reach the app as a header (the key check reads the headers)."""
    answer = exchange(running.port, chunked(b"X-API-Key: secret\r\n"))
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    seen = orjson.loads(answer.partition(b"\r\n\r\n")[2])
    assert seen["body"] == 5
    assert "x-api-key" not in seen["headers"]
    assert "transfer-encoding" in seen["headers"]


def test_trailers_over_the_limit_are_refused_with_431(running: Running) -> None:
    trailers = b"".join(b"X-T%d: %s\r\n" % (i, b"a" * 100) for i in range(MAX_HEADER_BYTES // 100 + 1))
    answer = exchange(running.port, chunked(trailers))
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]


def accept_backlog(port: int) -> int:
    """Connections the kernel has completed and queued on the listening socket, not yet accepted."""
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
            return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"nothing listens on {port}")


def test_every_pending_connection_is_accepted_when_the_socket_is_readable(running: Running) -> None:
    """With the loop busy, connections queue in the kernel; the first time the loop looks at the listening
    socket, it takes them all, where uvloop's own accept takes one per loop iteration."""
    busy, backlogs = threading.Event(), []

    def block() -> None:
        busy.wait(10)

    def after_the_block() -> None:
        backlogs.append(accept_backlog(running.port))  # this iteration ran no reader yet
        running.loop.call_soon(lambda: running.loop.call_soon(lambda: backlogs.append(accept_backlog(running.port))))

    running.loop.call_soon_threadsafe(block)
    running.loop.call_soon_threadsafe(after_the_block)
    clients = [socket.create_connection(("127.0.0.1", running.port), timeout=5) for _ in range(100)]
    try:
        deadline = time.monotonic() + 10
        while accept_backlog(running.port) < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        busy.set()
        deadline = time.monotonic() + 10
        while len(backlogs) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert backlogs == [100, 0]
        for client in clients:
            client.sendall(request())
        assert all(client.recv(4096).startswith(b"HTTP/1.1 200") for client in clients)
    finally:
        for client in clients:
            client.close()
