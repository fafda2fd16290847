"""The HTTP connection itself, before any route runs: uvicorn's httptools protocol with the two limits it
lacks. A request's line and headers must fit in `max_header_bytes` (431, whether they arrive at once or a
byte at a time: what httptools buffers stays bounded) and arrive within `header_timeout_s` of the
connection opening or of the previous answer (the connection is closed: a client that opens sockets and
sends nothing, or a header a byte a minute, holds nothing for long). Body limits and timeouts are the
middleware's (service.middleware.BodyLimit), where the route's error shape is known."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _HeadersTooLarge(Exception):
    pass


class GuardedHttpTools(HttpToolsProtocol):
    def __init__(self, *args: Any, max_header_bytes: int, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_header_bytes = max_header_bytes
        self.header_timeout_s = header_timeout_s
        self._in_headers = False  # a request has begun and its headers are not complete yet
        self._header_bytes = 0  # read while in its headers, after the read in which it began
        self._header_timer: asyncio.TimerHandle | None = None
        self._too_large = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_headers:
            # Counted before parsing, so a header never grows past the limit by more than one read; the
            # exact size is checked once the headers are complete. The read in which a request begins is
            # not counted: it may end the body of the one before (answered early, e.g. with 413).
            if self._header_bytes > self.max_header_bytes:
                self._too_large = True
                self.send_400_response("")
                return
            self._header_bytes += len(data)
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers, self._header_bytes = True, 0

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._stop_header_timer()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_header_bytes:
            self._too_large = True
            raise _HeadersTooLarge  # httptools stops parsing; uvicorn answers through send_400_response
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._await_headers()

    def send_400_response(self, msg: str) -> None:
        if not self._too_large:
            super().send_400_response(msg)
            return
        message = f"request line and headers exceed {self.max_header_bytes} bytes"
        body = orjson.dumps({"error": {"code": "headers_too_large", "message": message}})
        head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
        head += b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        self.transport.write(head + body)
        self.transport.close()

    def _await_headers(self) -> None:
        self._stop_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        # A request still being answered (pipelined behind this one) is left alone.
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()


def guarded_protocol(max_header_bytes: int, header_timeout_s: float) -> Any:
    """What uvicorn's `http` option takes: a protocol factory (a partial pickles for worker processes)."""
    return functools.partial(GuardedHttpTools, max_header_bytes=max_header_bytes, header_timeout_s=header_timeout_s)
