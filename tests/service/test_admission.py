"""Admission before the body is read: the rows a body holds at least, from its headers, and a real server
that refuses a large request under load before the client has sent its body."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.admission import rows_at_least
from tests.service.servers import running_server

MNIST = 784


@pytest.mark.parametrize(
    ("headers", "width", "rows"),
    [
        # .npy: 1,024 float32 rows of 784 (3,211,392 bytes) hold at least 512 float64 rows
        ({"content-type": "application/x-npy", "content-length": "3211392"}, MNIST, 512),
        # raw bytes: exactly, by X-Dtype (float32 unless named)
        ({"content-type": "application/octet-stream", "content-length": str(64 * MNIST * 4)}, MNIST, 64),
        ({"content-type": "application/octet-stream", "content-length": "6272", "x-dtype": "uint8"}, MNIST, 8),
        # V2 binary: the JSON part is not rows
        (
            {"content-type": "application/octet-stream", "content-length": "100128", "inference-header": "128"},
            1000,
            12,
        ),
        # text: at most 32 bytes a value
        ({"content-type": "application/json", "content-length": str(32 * 5 * 10)}, 5, 10),
        ({"content-type": "text/csv; charset=utf-8", "content-length": "100"}, 5, 1),
        ({"content-length": "1000000"}, MNIST, 39),  # no Content-Type: JSON
        ({"content-type": "multipart/form-data; boundary=x", "content-length": "9000000"}, MNIST, 1),
        ({"content-type": "application/json", "transfer-encoding": "chunked"}, 5, 1),
        ({"content-type": "application/json", "content-length": "0"}, 5, 0),
        ({"content-type": "application/json"}, 5, 0),
        ({"content-type": "application/json", "content-length": "\xb2"}, 5, 0),  # left to the body limit
    ],
)
def test_rows_a_body_holds_at_least(headers: dict[str, str], width: int, rows: int) -> None:
    assert rows_at_least(headers, width, "inference-header") == rows


BUSY = ["--workers", "1", "--batch-wait-ms", "4000", "--max-queue-wait-ms", "0.001"]
# Declared, never sent: as .npy at least 1,023 rows of the conv model (64 values); as JSON, at least 819 rows of
# tab (5 values). One run's worth either way (1,024 rows), so only the load decides.
CONV_NPY = ("application/x-npy", 512 * 1024)
TAB_JSON = ("application/json", 128 * 1024)
EXPECT = "Expect: 100-continue"


@pytest.fixture(scope="module")
def busy_server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """One worker whose graphs wait 4 s for company before a run, and which lets rows wait 1 µs: while a
    request waits in a graph's queue, that graph has no room for another one."""
    log = tmp_path_factory.mktemp("admission") / "server.log"
    with running_server(models_dir, log, *BUSY) as client:
        yield client


def _port(server: httpx.Client) -> int:
    return int(str(server.base_url).rsplit(":", 1)[1].rstrip("/"))


def _occupy(server: httpx.Client, paths: list[str], body: dict[str, object]) -> list[threading.Thread]:
    """Requests that sit in their graphs' queues for the batch wait, sent from threads, each on a connection
    of its own (a pooled one may be closed by the server's keep-alive timeout as it is reused)."""
    threads = [
        threading.Thread(target=httpx.post, args=(server.base_url.join(path),), kwargs={"json": body, "timeout": 30})
        for path in paths
    ]
    for thread in threads:
        thread.start()
    return threads


def _headers_only(port: int, path: str, body: tuple[str, int]) -> bytes:
    """The answer to a request's line and headers, with `Expect: 100-continue`, declaring a large body of
    this media type and length, none of which is sent; the interim 100 Continue when the server asks for it."""
    media, length = body
    head = [f"POST {path} HTTP/1.1", "Host: test", f"Content-Type: {media}", f"Content-Length: {length}", EXPECT]
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        return _read_answer(connection, within=3)


def _read_answer(connection: socket.socket, within: float) -> bytes:
    """One answer's head and body (Content-Length), or an interim 100 Continue; what came if it stops."""
    connection.settimeout(within)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = connection.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if b"content-length" in line), 0
        )
        while len(body) < length and (chunk := connection.recv(65536)):
            body += chunk
        return head + b"\r\n\r\n" + body
    except TimeoutError:
        return data


def _refused_while_busy(
    server: httpx.Client, path: str, body: tuple[str, int], occupied: list[threading.Thread]
) -> bytes:
    """The answer to a headers-only request, sent until one is refused or the occupying requests are done
    (the first may land before they queue)."""
    while True:
        answer = _headers_only(_port(server), path, body)
        if answer.startswith(b"HTTP/1.1 503") or not any(thread.is_alive() for thread in occupied):
            return answer
        time.sleep(0.05)


@pytest.mark.e2e
def test_a_large_request_is_refused_from_its_headers_before_its_body_is_sent(busy_server: httpx.Client) -> None:
    occupied = _occupy(busy_server, ["/models/conv/score"], {"inputs": [[0.0] * 8] * 8})
    answer = _refused_while_busy(busy_server, "/models/conv/score", CONV_NPY, occupied)
    assert answer.startswith(b"HTTP/1.1 503"), answer
    head = answer.lower()
    assert b'"code":"overloaded"' in head and b"retry-after: 1" in head and b"connection: close" in head
    assert b"100 continue" not in head  # the client was never invited to send its body
    for thread in occupied:
        thread.join()

    # With room again, the same headers get 100 Continue: the refusal came from the load, not the request.
    answer = _headers_only(_port(busy_server), "/models/conv/score", CONV_NPY)
    assert answer.startswith(b"HTTP/1.1 100 Continue"), answer


@pytest.mark.e2e
def test_a_client_that_sends_its_body_anyway_gets_the_refusal_when_its_upload_is_cut_short(
    busy_server: httpx.Client,
) -> None:
    # 8 MB of .npy: as many rows as a request may hold (at least 200,000 rows of tab by its length), which
    # cannot start within the 1 µs budget while a request waits in tab's scorer queue. The server answers
    # after the headers and closes, while the client is still uploading.
    occupied = _occupy(busy_server, ["/models/tab/score"], {"inputs": [[0.0] * 5]})
    body = b"\x93NUMPY" + b"\0" * (8 * 1024 * 1024)
    while True:
        started = time.monotonic()
        answer = httpx.post(
            busy_server.base_url.join("/models/tab/score"),
            content=body,
            headers={"Content-Type": "application/x-npy"},
            timeout=10,
        )  # httpx, like curl and wrk, reads the answer when its upload is cut short
        if answer.status_code == 503 or not occupied[0].is_alive():
            break  # the first may land before the occupying request queues
    assert (answer.status_code, answer.json()["error"]["code"]) == (503, "overloaded")
    assert answer.headers["Connection"] == "close" and answer.headers["Retry-After"] == "1"
    assert time.monotonic() - started < 5
    assert busy_server.get("/healthz").status_code == 200
    occupied[0].join()


@pytest.mark.e2e
def test_a_body_longer_than_any_request_is_refused_by_its_reader_not_told_to_retry(busy_server: httpx.Client) -> None:
    # Idle, the same body is admitted as the most rows a request may hold, and refused for what it is.
    answer = httpx.post(
        busy_server.base_url.join("/models/tab/score"),
        content=b"\x93NUMPY" + b"\0" * (8 * 1024 * 1024),
        headers={"Content-Type": "application/x-npy"},
        timeout=10,
    )
    assert (answer.status_code, answer.json()["error"]["code"]) == (400, "malformed_npy")


@pytest.mark.e2e
def test_v2_infer_is_refused_unread_when_none_of_the_graphs_has_room(busy_server: httpx.Client) -> None:
    path = "/v2/models/tab/infer"
    only_scorer = _occupy(busy_server, ["/models/tab/score"], {"inputs": [[0.0] * 5]})
    scorer_busy = _refused_while_busy(busy_server, "/models/tab/score", TAB_JSON, only_scorer)
    assert scorer_busy.startswith(b"HTTP/1.1 503"), scorer_busy
    # The encoder and decoder are free: the body may name an input and outputs that need only them.
    assert _headers_only(_port(busy_server), path, TAB_JSON).startswith(b"HTTP/1.1 100 Continue")
    every_graph = _occupy(busy_server, ["/models/tab/encode", "/models/tab/score"], {"inputs": [[0.0] * 5]})
    every_graph += _occupy(busy_server, ["/models/tab/decode"], {"latents": [[0.0, 0.0]]})
    answer = _refused_while_busy(busy_server, path, TAB_JSON, every_graph + only_scorer)
    assert answer.startswith(b"HTTP/1.1 503") and b'{"error":"the model is busy' in answer, answer
    for thread in every_graph + only_scorer:
        thread.join()
