"""Prometheus metrics (prometheus_client), one set per app, rendered by GET /metrics.

Request metrics are recorded by service.middleware.RequestMetrics, batch metrics by each model's batchers,
load outcomes and default versions by service.registry, and rows scored, their percentiles and the
monitoring window's statistics by service.monitoring. Model labels only ever name models the registry
knows: requests for any other name are counted under UNKNOWN_MODEL, so clients cannot grow the series.

`python -m service` points PROMETHEUS_MULTIPROC_DIR at a fresh folder (with one worker too: TTIN adds
more): every worker writes its values there and whichever worker answers /metrics adds them all up
(prometheus_client's multiprocess mode). A worker's counts outlive it; its live gauges go with it
(service.workers marks it dead).

Rendering adds up every series (under several workers, reading every worker's files): 4 to 10 ms. So
GET /metrics renders in a thread, off the event loop, and a scrape that arrives while a render runs waits
for the next one instead of starting its own (`Scrapes`)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
from anyio import to_thread
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from service.monitoring import DEFAULT_WINDOW, STATUS_CODE, Monitoring, Window

# Renders of one worker begin at least MIN_RENDER_GAP_S apart, and far enough apart that rendering takes at most
# RENDER_SHARE of its CPU, but at most MAX_RENDER_GAP_S apart (Prometheus waits 10 s for an answer by default).
# A render in a thread still holds the GIL, and the event loop waits for it each time it wakes up, so
# renders must be rare, not merely off the loop.
MIN_RENDER_GAP_S = 0.25
RENDER_SHARE = 0.1
MAX_RENDER_GAP_S = 1.0
SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# Not a valid model name (service.repository.NAME_PATTERN), so it can never collide with one.
UNKNOWN_MODEL = "_unknown"
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self, monitor_window: Window = DEFAULT_WINDOW) -> None:
        self.registry = CollectorRegistry()
        multiprocess = bool(os.environ.get(MULTIPROCESS_DIR))
        # Score monitoring keeps its own per-worker files (prometheus_client cannot add up a window).
        self.monitoring = Monitoring(monitor_window, os.environ.get(MULTIPROCESS_DIR))
        self.registry.register(MonitoringCollector(self.monitoring))
        # In multiprocess mode values live in files; the collector reads them at scrape time instead.
        into = None if multiprocess else self.registry
        if multiprocess:
            MultiProcessCollector(self.registry)
        request = ["model", "operation", "protocol"]
        self.requests = Counter("ae_requests", "Inference requests answered.", request, registry=into)
        self.errors = Counter(
            "ae_request_errors", "Inference requests answered with 4xx or 5xx.", [*request, "status"], registry=into
        )
        self.latency = Histogram(
            "ae_request_seconds", "Inference request latency.", request, buckets=SECONDS, registry=into
        )
        graph = ["model", "version", "graph"]
        self.batch_rows = Histogram("ae_batch_rows", "Rows per onnxruntime run.", graph, buckets=ROWS, registry=into)
        self.queued = Histogram(
            "ae_queue_seconds", "Time a request's rows waited for a batch.", graph, buckets=SECONDS, registry=into
        )
        self.compute = Histogram(
            "ae_compute_seconds", "Time one onnxruntime run took.", graph, buckets=SECONDS, registry=into
        )
        self.loads = Counter(
            "ae_model_loads",
            "Package loads by outcome (loaded or failed), at start-up, on a change found by polling, or by the "
            "repository API.",
            ["model", "version", "outcome"],
            registry=into,
        )
        self.default_version = Gauge(
            "ae_model_default_version",
            "The version answering requests that name none (0: no version serves).",
            ["model"],
            registry=into,
            multiprocess_mode="livemax",
        )

        self.scrapes = Scrapes(self.render)
        # prometheus_client's labels() costs more than the rest of recording; there are few label sets (known
        # models and one catch-all, times the operations and protocols), so their children are kept.
        self._children: dict[tuple[object, ...], Any] = {}

    def request_done(self, model: str, operation: str, protocol: str, status: int, seconds: float) -> None:
        """One inference request answered (HTTP status, or the HTTP status of a gRPC answer's error)."""
        labels = (model, operation, protocol)
        self._child(self.requests, labels).inc()
        self._child(self.latency, labels).observe(seconds)
        if status >= 400:
            self._child(self.errors, (*labels, str(status))).inc()

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def for_graph(self, model: str, version: int, graph: str) -> GraphStats:
        return GraphStats(self, (model, str(version), graph))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class GraphStats:
    """What one graph's batcher records: rows per run, time queued per request, time computing per run."""

    def __init__(self, metrics: Metrics, labels: tuple[str, str, str]) -> None:
        self.rows = metrics.batch_rows.labels(*labels)
        self.queued = metrics.queued.labels(*labels)
        self.compute = metrics.compute.labels(*labels)

    def observe_batch(self, rows: int, waits: list[float], compute: float) -> None:
        self.rows.observe(rows)
        self.compute.observe(compute)
        for wait in waits:
            self.queued.observe(wait)


class MonitoringCollector(Collector):
    """Rows scored and flagged, their percentile histogram, and the monitoring window's statistics of every
    live model version, from service.monitoring's files (all workers) at scrape time."""

    def __init__(self, monitoring: Monitoring) -> None:
        self.monitoring = monitoring

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        rows = CounterMetricFamily("ae_scored_rows", "Rows scored (every protocol).", labels=labels)
        flagged = CounterMetricFamily("ae_flagged_rows", "Rows scored above the threshold.", labels=labels)
        histogram = HistogramMetricFamily(
            "ae_score_percentile",
            "Rows by their score's percentile among the package's normal validation scores: bucket le=P counts "
            "rows scored at most the reference curve's P-th percentile (P% of normal rows).",
            labels=labels,
        )
        gauges = {name: GaugeMetricFamily(f"ae_monitor_{name}", text, labels=labels) for name, text in _GAUGES.items()}
        for reference, totals, report in self.monitoring.snapshots():
            values = [reference.name, str(reference.version)]
            rows.add_metric(values, totals.rows)
            flagged.add_metric(values, totals.flagged)
            histogram.add_metric(values, totals.buckets, totals.percentile_sum)
            window = report["window"]["rows_seen"]
            gauges["status"].add_metric(values, STATUS_CODE[report["status"]])
            gauges["window_rows"].add_metric(values, window)
            gauges["expected_anomaly_rate"].add_metric(values, reference.expected_rate)
            if window:  # statistics of no rows are not numbers
                gauges["anomaly_rate"].add_metric(values, report["anomaly_rate"]["observed"])
                gauges["anomaly_rate_p_value"].add_metric(values, report["anomaly_rate"]["p_value"])
                gauges["anomaly_rate_adjusted_p_value"].add_metric(values, report["anomaly_rate"]["adjusted_p_value"])
                gauges["psi"].add_metric(values, report["psi"])
                gauges["ks"].add_metric(values, report["ks"]["statistic"])
                gauges["ks_p_value"].add_metric(values, report["ks"]["p_value"])
        yield from (rows, flagged, histogram, *gauges.values())


_GAUGES = {
    "status": "Score monitoring status over the window: -1 no data, 0 ok, 1 warning, 2 drift.",
    "window_rows": "Rows in the monitoring window (all workers).",
    "anomaly_rate": "Share of the window's rows scored above the threshold.",
    "expected_anomaly_rate": "The share of normal rows above the threshold: 1 - the calibration quantile.",
    "anomaly_rate_p_value": "Two-sided binomial p-value of the window's anomaly rate against the expected rate.",
    "anomaly_rate_adjusted_p_value": "The same test allowing for the threshold's estimation from the calibration "
    "rows (beta-binomial): what the status and the shipped alert use.",
    "psi": "Population stability index of the window's score percentiles against the reference bins.",
    "ks": "Kolmogorov-Smirnov distance between the window's scores and the reference curve.",
    "ks_p_value": "Asymptotic p-value of the Kolmogorov-Smirnov distance.",
}


class Scrapes:
    """Answers to GET /metrics, each a render that began after its scrape arrived (so it shows every request
    answered before the scrape), rendered in a thread, one at a time. Scrapes that arrive during a render
    share the next one, which begins MIN_RENDER_GAP_S after the last one began, or later when the last one
    took more than RENDER_SHARE of that in CPU time. A flood of scrapes gets slower answers (by a quarter of a
    second), not more renders."""

    def __init__(self, render: Callable[[], bytes]) -> None:
        self._render = render
        self._lock = anyio.Lock()
        self._body = b""
        self._started = -math.inf
        self._next = -math.inf

    async def latest(self) -> bytes:
        arrived = time.monotonic()
        async with self._lock:
            if self._started < arrived:
                await anyio.sleep(max(0.0, self._next - time.monotonic()))
                self._body, started, cpu_s = await to_thread.run_sync(self._timed_render)
                gap = min(max(MIN_RENDER_GAP_S, cpu_s / RENDER_SHARE), MAX_RENDER_GAP_S)
                self._started, self._next = started, started + gap
            return self._body

    def _timed_render(self) -> tuple[bytes, float, float]:
        """The render, when it began, and the CPU time it took (not the wall time: on a busy worker the
        thread waits for the GIL, which costs nothing)."""
        started, cpu = time.monotonic(), time.thread_time()
        return self._render(), started, time.thread_time() - cpu
