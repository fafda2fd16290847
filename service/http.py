"""The HTTP connections themselves, before any route runs: a server that accepts bursts of them at once
(GreedyAcceptServer), and uvicorn's httptools protocol with the two limits it lacks (GuardedHttpTools). A
request's line and headers must fit in `max_header_bytes` (431, whether they arrive at once or a byte at a
time: what httptools buffers stays bounded) and arrive within `header_timeout_s` of the connection opening
or of the previous answer (the connection is closed: a client that opens sockets and sends nothing, or a
header a byte a minute, holds nothing for long). Body limits and timeouts are the middleware's
(service.middleware.BodyLimit), where the route's error shape is known."""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import orjson
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)

# How long a draining worker keeps an idle keep-alive connection open for the request its client may
# already have sent; that request is answered with `connection: close`.
DRAIN_IDLE_S = 1.0


class _HeadersTooLarge(Exception):
    pass


class GuardedHttpTools(HttpToolsProtocol):
    def __init__(
        self, *args: Any, max_header_bytes: int, header_timeout_s: float, send_timeout_s: float, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.max_header_bytes = max_header_bytes
        self.header_timeout_s = header_timeout_s
        self.send_timeout_s = send_timeout_s
        self._trailer_bytes = 0
        self._send_timer: asyncio.TimerHandle | None = None
        self._in_headers = False  # a request has begun and its headers are not complete yet
        self._header_bytes = 0  # read while in its headers, after the read in which it began
        self._header_timer: asyncio.TimerHandle | None = None
        self._too_large = False
        self._draining = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        _cancel(self._header_timer)
        _cancel(self._send_timer)
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
        self._in_headers, self._header_bytes, self._trailer_bytes = True, 0, 0

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_headers:
            super().on_header(name, value)
            return
        # A trailer, after a chunked body. uvicorn would add it to the request's headers, which the app may
        # read only later: a trailing X-API-Key would pass the key check, and endless trailers grew memory
        # without limit. Trailers are dropped, and bounded like headers.
        self._trailer_bytes += len(name) + len(value) + 4
        if self._trailer_bytes > self.max_header_bytes:
            self._too_large = True
            raise _HeadersTooLarge

    def on_headers_complete(self) -> None:
        self._in_headers = False
        _cancel(self._header_timer)
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_header_bytes:
            self._too_large = True
            raise _HeadersTooLarge  # httptools stops parsing; uvicorn answers through send_400_response
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._await_headers()

    def shutdown(self) -> None:
        """The worker drains. uvicorn closes an idle keep-alive connection at once, failing a request its
        client sent meanwhile; here that request is answered (with `connection: close`), and a connection
        that stays idle is closed after DRAIN_IDLE_S."""
        if self.cycle is not None and not self.cycle.response_complete:
            super().shutdown()
            return
        self._draining = True
        self.loop.call_later(DRAIN_IDLE_S, self._close_if_idle)

    def _close_if_idle(self) -> None:
        if (self.cycle is None or self.cycle.response_complete) and not self._in_headers:
            self.transport.close()

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

    def pause_writing(self) -> None:
        # The client stopped reading while its answer is buffered: it has send_timeout_s to start again, or
        # the connection is dropped (closing would wait for the buffer to drain, which it never does).
        super().pause_writing()
        _cancel(self._send_timer)
        self._send_timer = self.loop.call_later(self.send_timeout_s, self._send_too_slow)

    def resume_writing(self) -> None:
        _cancel(self._send_timer)
        super().resume_writing()

    def _send_too_slow(self) -> None:
        logger.info("dropped a connection that stopped reading its answer for %g s", self.send_timeout_s)
        self.transport.abort()

    def _await_headers(self) -> None:
        _cancel(self._header_timer)
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _headers_too_slow(self) -> None:
        # A request still being answered (pipelined behind this one) is left alone.
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()


def _cancel(timer: asyncio.TimerHandle | None) -> None:
    """Cancels a timer that may not be set (cancelling one that fired or was cancelled does nothing)."""
    if timer is not None:
        timer.cancel()


def guarded_protocol(max_header_bytes: int, header_timeout_s: float, send_timeout_s: float) -> Any:
    """What uvicorn's `http` option takes: a protocol factory (a partial pickles for worker processes)."""
    return functools.partial(
        GuardedHttpTools,
        max_header_bytes=max_header_bytes,
        header_timeout_s=header_timeout_s,
        send_timeout_s=send_timeout_s,
    )


# Errors that mean the process is out of descriptors or memory for now: accepting pauses for a second, as
# asyncio's own accept loop does, instead of spinning on a listening socket that stays readable.
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class Companion(Protocol):
    async def start(self) -> None: ...

    async def stop(self, grace: float) -> None: ...


class GreedyAcceptServer(uvicorn.Server):
    """uvicorn's server, accepting every pending connection when its listening socket is readable.

    uvloop (libuv 1.45 and later) accepts one connection per loop iteration: while the loop is busy
    answering the connections it has, a burst of new ones waits in the kernel's accept queue for seconds
    (1,024 new connections: p99 5 to 7 s, about 50 accepted a second). Here the service's own reader
    accepts them all, up to the backlog, and hands each to the loop as uvicorn would, so uvloop's faster
    transports stay (docs/benchmark.md, Overload)."""

    def __init__(
        self,
        config: uvicorn.Config,
        reuse_port: bool = False,
        listen_once: Callable[[], bool] | None = None,
        on_listening: Callable[[], None] | None = None,
        companions: Sequence[Companion] = (),
    ) -> None:
        """`listen_once`: listen only once it returns True (a worker whose models are loading while another
        worker serves: the connections the kernel would hand it meanwhile could only wait or be answered
        503). `on_listening`: called once it listens. `companions`: servers of other protocols on the same
        loop and app (gRPC), started once this one listens and drained with it, before the app shuts down."""
        super().__init__(config)
        self.reuse_port = reuse_port
        self.listen_once = listen_once
        self.on_listening = on_listening
        self.companions = companions
        self._started: list[Companion] = []
        self.listening = False
        self._listeners: list[socket.socket] = []
        self._handing_over: set[asyncio.Task[Any]] = set()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # the lifespan and the state, without a listener of uvicorn's own
        waited = 0
        while self.listen_once is not None and not self.listen_once() and not self.should_exit:
            if waited % 20 == 0 and self.config.callback_notify is not None:
                await self.config.callback_notify()  # uvicorn's own ticks only start once this returns
            await asyncio.sleep(0.05)
            waited += 1
        if self.should_exit:
            return
        try:
            self._listeners = listen(self.config.host, self.config.port, self.config.backlog, self.reuse_port)
        except OSError as error:
            logger.error("cannot listen on %s:%s: %s", self.config.host, self.config.port, error)
            await self.lifespan.shutdown()
            sys.exit(STARTUP_FAILURE)
        for listener in self._listeners:
            self._watch(listener)
        try:
            for companion in self.companions:
                await companion.start()
                self._started.append(companion)
        except OSError as error:
            logger.error("%s", error)
            await self.shutdown()
            sys.exit(STARTUP_FAILURE)
        self.listening = True
        self._log_started_message(self._listeners)
        if self.on_listening is not None:
            self.on_listening()

    def _watch(self, listener: socket.socket) -> None:
        asyncio.get_running_loop().add_reader(listener.fileno(), self._accept, listener)

    def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.config.backlog):
            try:
                connection, _ = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as error:
                if error.errno not in _OUT_OF_RESOURCES:
                    raise
                logger.error("accepting connections paused for 1 s: %s", error)
                loop.remove_reader(listener.fileno())
                loop.call_later(1.0, self._watch, listener)
                return
            connection.setblocking(False)
            task = loop.create_task(loop.connect_accepted_socket(self._protocol, connection))
            self._handing_over.add(task)
            task.add_done_callback(self._handed_over)

    def _handed_over(self, task: asyncio.Task[Any]) -> None:
        self._handing_over.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            # A client gone between accept and hand-over: nothing to answer, nothing to keep.
            logger.debug("a connection closed before it was served: %s", error)

    def _protocol(self) -> asyncio.Protocol:
        return self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's drain, the companions draining at the same time; the app shuts down (its models
        unloaded) only once they are done too."""
        grace = float(self.config.timeout_graceful_shutdown or 0)
        draining = [asyncio.create_task(companion.stop(grace)) for companion in self._started]
        self._started = []
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            loop.remove_reader(listener.fileno())
            # Connections the kernel queued on this socket would be reset when it closes (the other workers'
            # sockets do not take them over): they are accepted and answered first.
            self._accept(listener)
            listener.close()
        self._listeners = []
        if self._handing_over:  # so uvicorn's shutdown below drains them with the rest
            await asyncio.wait(self._handing_over)
        app_shutdown = self.lifespan.shutdown

        async def after_companions() -> None:
            await asyncio.gather(*draining, return_exceptions=True)
            await app_shutdown()

        # uvicorn shuts the app down at the end of its drain; the companions' calls must be done by then.
        self.lifespan.shutdown = after_companions
        try:
            await super().shutdown(sockets)
        finally:
            self.lifespan.shutdown = app_shutdown
            await asyncio.gather(*draining, return_exceptions=True)


def listen(host: str, port: int, backlog: int, reuse_port: bool = False) -> list[socket.socket]:
    """Listening sockets on every address `host` resolves to (both families for "localhost"), as asyncio's
    create_server makes them. With `reuse_port`, each worker process binds its own and the kernel spreads
    new connections over them evenly."""
    listeners = bind(host, port, reuse_addr=True, reuse_port=reuse_port)
    try:
        for listener in listeners:
            listener.listen(backlog)
            listener.setblocking(False)
    except OSError:
        for listener in listeners:
            listener.close()
        raise
    return listeners


def bind(host: str, port: int, reuse_addr: bool, reuse_port: bool) -> list[socket.socket]:
    """Sockets bound to every address `host` resolves to, not listening yet; all closed if one fails. Port 0
    takes the port the system picks for the first address, for every address."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    bound: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(found):
            if port == 0 and bound:
                address = (address[0], bound[0].getsockname()[1], *address[2:])
            sock = socket.socket(family, kind, proto)
            bound.append(sock)
            if reuse_addr:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError:
        for sock in bound:
            sock.close()
        raise
    return bound
