"""ASGI middleware that every route passes through: request ids, traces and log lines, API keys, the
request body limit and the request metrics."""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Any
from urllib.parse import parse_qs

from anyio import to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import memory, tracing
from service.errors import ServiceError, render
from service.metrics import Metrics
from service.registry import Registry

# After a body this large, the worker hands the memory it freed back to the system (service.memory).
TRIM_BYTES = 1024 * 1024


class BodyLimit:
    """Bounds what request bodies can hold: each body to `max_bytes` (413, by Content-Length up front or by
    counting a chunked stream), its arrival to `timeout_s` from the first byte read (408: a client that
    promises a body and stalls is dropped), and the bytes of all requests in progress together to
    `max_bytes_in_flight` (503 `overloaded`), so memory stays bounded whatever clients send. Errors are raised
    where the body is read, so the one error handler renders them."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float, max_bytes_in_flight: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.max_bytes_in_flight = max_bytes_in_flight
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            # Refused before anything is read, so a client that sent `Expect: 100-continue` is not invited
            # to upload what would be refused. Past this, only the bytes counted can exceed the limit.
            # Closed after the answer: kept open, the server would read and drop whatever the client sends.
            refused = self._too_large()
            refused.headers = {"Connection": "close"}
            await render(scope, refused)(scope, receive, send)
            return
        received, complete, deadline = 0, False, None

        async def limited_receive() -> Message:
            nonlocal received, complete, deadline
            if complete:  # after the body, receive() only waits for a disconnect: no deadline there
                return await receive()
            deadline = deadline or asyncio.get_running_loop().time() + self.timeout_s
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise ServiceError(
                    408, "body_timeout", f"the request body did not arrive within {self.timeout_s:g} s"
                ) from None
            chunk = len(message.get("body", b""))
            complete = not message.get("more_body", False)
            received += chunk
            self.in_flight += chunk
            if received > self.max_bytes:
                raise self._too_large()
            if self.in_flight > self.max_bytes_in_flight:
                raise ServiceError(
                    503,
                    "overloaded",
                    "too many request bytes are being received at once; retry later",
                    {"Retry-After": "1"},
                )
            return message

        try:
            await self.app(scope, limited_receive, send)
        finally:
            self.in_flight -= received
            if received >= TRIM_BYTES:
                await to_thread.run_sync(memory.trim)

    def _too_large(self) -> ServiceError:
        return ServiceError(413, "body_too_large", f"the request body exceeds {self.max_bytes} bytes")


class RequestMetrics:
    """Counts, errors and latency of inference routes, labelled by model, operation and protocol. The router writes
    the matched route and path parameters into the scope, so they are read once the request is answered;
    a model the registry does not know is counted under one label (service.metrics.UNKNOWN_MODEL)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, registry: Registry) -> None:
        self.app, self.metrics, self.registry = app, metrics, registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        operation = getattr(route, "operation", None)
        if route is None or operation is None:  # not an inference route
            return
        asked = scope.get("path_params", {}).get("model") or _query_model(scope)
        protocol = "v2-http" if route.protocol == "v2" else route.protocol
        self.metrics.request_done(self.registry.metric_label(asked), operation, protocol, status, seconds)


def _query_model(scope: Scope) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("model")
    return values[0] if values else None


class RequestTracing:
    """Each HTTP request inside service.tracing.request: its `X-Request-ID` (the client's, when safe, or a new
    one) is echoed in the answer, its server span joins the client's `traceparent` (tracing on), and its
    line is logged once it is answered, with the route's protocol and operation and the model it named."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in CARRIED_HEADERS
        }
        method = scope["method"]
        with tracing.request(carrier, "http", method, attributes=_span_attributes(scope)) as record:
            record.method, record.path = method, scope["path"]
            echoed = (b"x-request-id", record.request_id.encode())

            async def send_with_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    record.status = message["status"]
                    message = {**message, "headers": [*message.get("headers", ()), echoed]}
                await send(message)

            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                record.status = record.status or 500
                raise
            finally:
                _describe(record, scope)


CARRIED_HEADERS = frozenset(name.encode() for name in tracing.CARRIED)


def _span_attributes(scope: Scope) -> dict[str, Any]:
    if not tracing.ENABLED:
        return {}
    return {"http.request.method": scope["method"], "url.path": scope["path"], "url.scheme": scope["scheme"]}


def _describe(record: tracing.RequestRecord, scope: Scope) -> None:
    """What the router found: the protocol and operation of the route, and the model the request named
    where no batcher has said which one computed it."""
    route = scope.get("route")
    record.protocol = getattr(route, "protocol", record.protocol)
    record.operation = getattr(route, "operation", None)
    if record.model is None and record.operation is not None:
        record.model = scope.get("path_params", {}).get("model") or _query_model(scope)
    if record.span is not None and route is not None:
        record.span.update_name(f"{scope['method']} {route.path}")
        record.span.set_attribute("http.route", route.path)


# Always open: probes (Kubernetes, KServe), and the page's static shell, which asks for a key itself. The
# repository API checks its own admin keys (service.routes.repository).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/", "/ui"})
OPEN_PREFIXES = ("/ui/assets/", "/v2/repository/")
UNAUTHORIZED = ServiceError(
    401,
    "unauthorized",
    "send an API key as `Authorization: Bearer KEY` or `X-API-Key: KEY`",
    {"WWW-Authenticate": "Bearer"},
)


class ApiKeys:
    """Refuses requests without one of `keys` (401 in the route's error shape) on every route but the open
    ones; /metrics too when `metrics_need_key`. Keys are compared in constant time, every one of them."""

    def __init__(self, app: ASGIApp, keys: tuple[str, ...], metrics_need_key: bool) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys]
        self.open = OPEN_PATHS if metrics_need_key else OPEN_PATHS | {"/metrics"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or self._open(scope["path"]) or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        await render(scope, UNAUTHORIZED)(scope, receive, send)

    def _open(self, path: str) -> bool:
        return path in self.open or path.startswith(OPEN_PREFIXES)

    def _allowed(self, scope: Scope) -> bool:
        headers = dict(scope["headers"])
        given = [bearer_key(headers.get(b"authorization", b"")), headers.get(b"x-api-key", b"").strip()]
        return key_matches([key for key in given if key], self.keys)


def bearer_key(authorization: bytes) -> bytes:
    """The key of an `Authorization: Bearer KEY` header; empty for any other scheme."""
    scheme, _, key = authorization.partition(b" ")
    return key.strip() if scheme.lower() == b"bearer" else b""


def key_matches(given: list[bytes], keys: list[bytes]) -> bool:
    """Whether a given key is one of `keys`. Every pair is compared, each in constant time, so the answer's
    timing says nothing about the keys."""
    return any([hmac.compare_digest(offered, key) for offered in given for key in keys])
