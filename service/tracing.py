"""What is recorded of each request: its id, its OpenTelemetry trace, and its one log line.

Every protocol enters `request(...)` once per request, from the headers or metadata it received; the data
plane and the batchers find the request's record there (`current()`) and add what they know: the model and
version that computed it, its rows, how long it queued. When the request ends, its server span ends and one
line is logged ("request", on the `service.requests` logger, with those facts as fields: service.logs).

Traces are off unless the standard OpenTelemetry variables ask for them (`start`: an OTLP endpoint, or
OTEL_TRACES_EXPORTER); while off, nothing here creates a span, not even a no-op one: every entry point checks
`ENABLED` first. The exporter, its endpoint, headers and timeouts, the sampler (OTEL_TRACES_SAMPLER) and the
batch processor's schedule (OTEL_BSP_*) are read by the OpenTelemetry SDK itself."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

# Read on every request before anything is traced; set by start() in each worker, after the fork.
ENABLED = False
DEFAULT_SERVICE_NAME = "autoencoder-service"
REQUEST_ID = "x-request-id"
# A request id a client sends is kept when it is this short and of these characters (it goes into log lines
# and a response header as it is); any other is replaced by a generated one.
MAX_REQUEST_ID = 128
SAFE_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:=+/@-]{{1,{MAX_REQUEST_ID}}}")
# The headers (or gRPC metadata keys) a request is traced and identified by.
CARRIED = frozenset({"traceparent", "tracestate", REQUEST_ID})

_tracer: trace.Tracer | None = None
_provider: TracerProvider | None = None
_requests_log = logging.getLogger("service.requests")


@dataclass(slots=True)
class RequestRecord:
    """One request's facts, filled in as it is served; its log line's fields and its server span's attributes."""

    request_id: str
    protocol: str
    started: float  # perf_counter
    span: trace.Span | None = None
    traced: bool = False  # its span records (sampled): only then are child spans made
    method: str | None = None  # an HTTP method or a gRPC method's full name
    path: str | None = None
    operation: str | None = None
    model: str | None = None
    version: int | str | None = None
    rows: int | None = None
    queue_wait_s: float | None = None  # the longest its rows waited for a batch, over the graphs it ran
    status: int | str | None = None  # an HTTP status or a gRPC status code's name

    @property
    def trace_id(self) -> str | None:
        if self.span is None:
            return None
        context = self.span.get_span_context()
        return trace.format_trace_id(context.trace_id) if context.is_valid else None

    def fields(self) -> dict[str, Any]:
        """The log line's fields, in a fixed order; absent facts are null."""
        wait = self.queue_wait_s
        return {
            "request_id": self.request_id,
            "trace_id": self.trace_id,
            "protocol": self.protocol,
            "method": self.method,
            "path": self.path,
            "operation": self.operation,
            "model": self.model,
            "version": self.version,
            "rows": self.rows,
            "status": self.status,
            "latency_ms": round((time.perf_counter() - self.started) * 1000, 3),
            "queue_wait_ms": None if wait is None else round(wait * 1000, 3),
        }

    def waited(self, seconds: float) -> None:
        self.queue_wait_s = seconds if self.queue_wait_s is None else max(self.queue_wait_s, seconds)


_current: ContextVar[RequestRecord | None] = ContextVar("request_record", default=None)


def current() -> RequestRecord | None:
    """The record of the request being served in this context; None outside one."""
    return _current.get()


def request_id(given: str | None) -> str:
    """The id a client sent when it is safe to log and echo as it is, else a new one (32 hex digits)."""
    if given is not None and SAFE_REQUEST_ID.fullmatch(given):
        return given
    return os.urandom(16).hex()


def request(
    carrier: Mapping[str, str],
    protocol: str,
    name: str,
    *,
    kind: SpanKind = SpanKind.SERVER,
    attributes: Mapping[str, Any] | None = None,
) -> Served:
    """Serves one request inside (`with tracing.request(...) as record:`): its record is current(), and with
    tracing on, its server span (`name`) joins the trace of the W3C `traceparent` in `carrier` (lower-case
    header or metadata names) and is the parent of every span started inside. The caller sets the record's
    status (and any fact it knows); an exception leaving the block marks the span an error. On exit the span
    ends and the request's line is logged."""
    return Served(carrier, protocol, name, kind, attributes)


class Served:
    """tracing.request's context manager: a class, not a generator, as it runs on every request."""

    __slots__ = ("_attached", "_token", "attributes", "carrier", "kind", "name", "protocol", "record")

    def __init__(
        self,
        carrier: Mapping[str, str],
        protocol: str,
        name: str,
        kind: SpanKind,
        attributes: Mapping[str, Any] | None,
    ) -> None:
        self.carrier, self.protocol, self.name, self.kind, self.attributes = carrier, protocol, name, kind, attributes
        self._attached: object = None

    def __enter__(self) -> RequestRecord:
        record = self.record = RequestRecord(
            request_id(self.carrier.get(REQUEST_ID)), self.protocol, time.perf_counter()
        )
        self._token = _current.set(record)
        if ENABLED and _tracer is not None:
            parent = propagate.extract(self.carrier)
            attributes = {**(self.attributes or {}), "request.id": record.request_id}
            record.span = _tracer.start_span(self.name, parent, self.kind, attributes=attributes)
            # A request the sampler leaves out keeps its trace id (for its log line) and costs nothing more.
            record.traced = record.span.is_recording()
            if record.traced:
                self._attached = otel_context.attach(trace.set_span_in_context(record.span, parent))
        return record

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _: object) -> None:
        record = self.record
        if self._attached is not None:
            otel_context.detach(self._attached)  # type: ignore[arg-type]
        _current.reset(self._token)
        if record.traced and record.span is not None:
            if error is not None:
                record.span.record_exception(error)
                record.span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            _end_server_span(record)
        if _requests_log.isEnabledFor(logging.INFO):
            _requests_log.info("request", extra={"fields": record.fields()})


def _end_server_span(record: RequestRecord) -> None:
    span = record.span
    assert span is not None
    facts = {
        "operation": record.operation,
        "model": record.model,
        "model.version": record.version,
        "rows": record.rows,
        "queue_wait_ms": None if record.queue_wait_s is None else record.queue_wait_s * 1000,
    }
    span.set_attributes({key: value for key, value in facts.items() if value is not None})
    if record.status is not None:
        # gRPC calls report the HTTP status their outcome maps to (service.errors) or their code's name.
        span.set_attribute("status" if record.protocol == "grpc" else "http.response.status_code", record.status)
        if isinstance(record.status, int) and record.status >= 500:
            span.set_status(Status(StatusCode.ERROR))
    span.end()


_NOTHING = contextlib.nullcontext()


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one around a block (tracing on, inside a traced request); else nothing."""
    record = current()
    if record is None or not record.traced or _tracer is None:
        return _NOTHING
    return _tracer.start_as_current_span(name, attributes=attributes)


def finished_span(
    name: str, parent: trace.Span, start_ns: int, end_ns: int, attributes: Mapping[str, Any], error: bool = False
) -> None:
    """A span of `parent`'s that has already happened (a request's wait in a queue, a batch it ran in), from
    wall-clock nanoseconds."""
    if _tracer is None:
        return
    child = _tracer.start_span(name, trace.set_span_in_context(parent), start_time=start_ns, attributes=attributes)
    if error:
        child.set_status(Status(StatusCode.ERROR))
    child.end(end_time=end_ns)


# --- set-up, per process -------------------------------------------------------------------------------


class TracingConfigError(ValueError):
    pass


def wanted(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the OpenTelemetry variables ask for traces: an exporter named, or an OTLP endpoint set (and
    OTEL_SDK_DISABLED not true)."""
    return bool(_exporter_names(env))


def _exporter_names(env: Mapping[str, str]) -> list[str]:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = env.get("OTEL_TRACES_EXPORTER", "").strip()
    if not named:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return ["otlp"] if endpoint else []
    return [name.strip().lower() for name in named.split(",") if name.strip().lower() not in ("", "none")]


def _exporters(env: Mapping[str, str]) -> list[Any]:
    exporters = []
    for name in _exporter_names(env):
        if name == "otlp":
            exporters.append(_otlp_exporter(env))
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        else:
            raise TracingConfigError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r}; known: otlp, console, none")
    return exporters


def _otlp_exporter(env: Mapping[str, str]) -> Any:
    # The exporters read their endpoint, headers, timeout, compression and certificates from the environment.
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    )
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    raise TracingConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported; use http/protobuf or grpc")


def start(env: Mapping[str, str] = os.environ, processors: Sequence[SpanProcessor] = ()) -> bool:
    """Turns tracing on in this process when the environment asks for it (or `processors` are given): one
    tracer provider, its exporters behind batch span processors, whose threads start here. Called in each
    worker after the fork (threads do not survive one). Whether tracing is on; TracingConfigError for an
    exporter or protocol that does not exist."""
    global ENABLED, _tracer, _provider
    exporters = _exporters(env)
    if not exporters and not processors:
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"process.pid": os.getpid()})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER
    for processor in [*processors, *(BatchSpanProcessor(exporter) for exporter in exporters)]:
        provider.add_span_processor(processor)
    _provider, _tracer = provider, provider.get_tracer("service")
    ENABLED = True
    return True


def stop() -> None:
    """Sends the spans still buffered and stops the exporters' threads; tracing is off afterwards."""
    global ENABLED, _tracer, _provider
    ENABLED = False
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()
