"""Counters and histograms in the Prometheus text format, kept in memory; GET /metrics renders them.

Request metrics are recorded by one ASGI middleware per request; batch metrics by each model's batchers."""

from __future__ import annotations

import bisect
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

Labels = tuple[tuple[str, str], ...]

SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def lines(self, name: str, labels: Labels) -> Iterable[str]:
        cumulative = 0
        for bound, count in zip([*map(_number, self.buckets), "+Inf"], self.counts, strict=True):
            cumulative += count
            yield f"{name}_bucket{_labels((*labels, ('le', bound)))} {cumulative}"
        yield f"{name}_sum{_labels(labels)} {self.sum}"
        yield f"{name}_count{_labels(labels)} {cumulative}"


class Family:
    """One metric name: a counter or a histogram per label set."""

    def __init__(self, name: str, kind: str, help: str, buckets: tuple[float, ...] = ()) -> None:
        self.name, self.kind, self.help, self.buckets = name, kind, help, buckets
        self.values: dict[Labels, float] = defaultdict(float)
        self.histograms: dict[Labels, Histogram] = {}

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        self.values[labels] += amount

    def observe(self, labels: Labels, value: float) -> None:
        histogram = self.histograms.get(labels)
        if histogram is None:
            histogram = self.histograms[labels] = Histogram(self.buckets)
        histogram.observe(value)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        lines += [f"{self.name}{_labels(labels)} {_number(value)}" for labels, value in sorted(self.values.items())]
        for labels, histogram in sorted(self.histograms.items()):
            lines += histogram.lines(self.name, labels)
        return lines


class BatchStats:
    """What one model's batchers record: rows per run, time queued per request, time computing per run."""

    def __init__(self, model: str, version: int) -> None:
        self.labels: Labels = (("model", model), ("version", str(version)))
        self.rows = Family("ae_batch_rows", "histogram", "Rows per onnxruntime run.", ROWS)
        self.queued = Family("ae_queue_seconds", "histogram", "Time a request's rows waited for a batch.", SECONDS)
        self.compute = Family("ae_compute_seconds", "histogram", "Time one onnxruntime run took.", SECONDS)

    def for_graph(self, graph: str) -> GraphStats:
        return GraphStats(self, (*self.labels, ("graph", graph)))

    def families(self) -> list[Family]:
        return [self.rows, self.queued, self.compute]


class GraphStats:
    def __init__(self, stats: BatchStats, labels: Labels) -> None:
        self.stats, self.labels = stats, labels

    def observe_batch(self, rows: int, waits: list[float], compute: float) -> None:
        self.stats.rows.observe(self.labels, rows)
        self.stats.compute.observe(self.labels, compute)
        for wait in waits:
            self.stats.queued.observe(self.labels, wait)


class RequestStats:
    def __init__(self) -> None:
        self.requests = Family("ae_requests_total", "counter", "Inference requests answered.")
        self.errors = Family("ae_request_errors_total", "counter", "Inference requests answered with 4xx or 5xx.")
        self.latency = Family("ae_request_seconds", "histogram", "Inference request latency.", SECONDS)

    def families(self) -> list[Family]:
        return [self.requests, self.errors, self.latency]


def render(families: Iterable[Family]) -> bytes:
    """Families of the same name (one per model) are merged under one HELP/TYPE header."""
    merged: dict[str, Family] = {}
    for family in families:
        target = merged.setdefault(family.name, Family(family.name, family.kind, family.help, family.buckets))
        target.values.update(family.values)
        target.histograms.update(family.histograms)
    return ("\n".join(line for family in merged.values() for line in family.render()) + "\n").encode()


class RequestMetrics:
    """ASGI middleware: counts, errors and latency of inference routes, labelled by model and operation.
    The router writes the matched route and path parameters into the scope, so they are read afterwards."""

    def __init__(self, app: ASGIApp, stats: RequestStats, default_model: Callable[[], str | None]) -> None:
        self.app, self.stats, self.default_model = app, stats, default_model

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
        name = getattr(route, "name", "") or ""
        if "-" not in name:
            return
        model = scope.get("path_params", {}).get("model") or _query_model(scope) or self.default_model() or ""
        labels: Labels = (("model", model), ("operation", name.split("-", 1)[0]))
        self.stats.requests.inc(labels)
        self.stats.latency.observe(labels, seconds)
        if status >= 400:
            self.stats.errors.inc((*labels, ("status", str(status))))


def _query_model(scope: Scope) -> str | None:
    for part in scope.get("query_string", b"").decode("latin-1").split("&"):
        key, _, value = part.partition("=")
        if key == "model" and value:
            return value
    return None


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    escaped = (
        f'{key}="{value.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for key, value in labels
    )
    return "{" + ",".join(escaped) + "}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
