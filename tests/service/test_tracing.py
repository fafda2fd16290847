"""Request ids and OpenTelemetry spans, in process: the app's spans go to an in-memory exporter."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import (
    TraceServiceServicer,
    add_TraceServiceServicer_to_server,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service import tracing
from tests.service.conftest import AppMaker

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
EXPORTER_THREAD = "OtelBatch"  # the SDK's batch processors' threads


@pytest.fixture(scope="module")
def slow_batches_app(make_app: AppMaker) -> FastAPI:
    # Batches wait 200 ms for company, so concurrent requests share one onnxruntime run.
    return make_app(batch_wait_ms=200)


def client_of(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app, raise_app_exceptions=False), base_url="http://test")


def of_trace(exporter: InMemorySpanExporter, trace_id: str) -> dict[str, ReadableSpan]:
    found = [span for span in exporter.get_finished_spans() if f"{span.context.trace_id:032x}" == trace_id]
    return {span.name: span for span in found}


# --- request ids ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["abc-123", "Root=1-5759e988-bd862e3fe1be46a994272793", "a" * 128, "x.y_z:1/2+3@4"])
def test_a_safe_request_id_is_kept(given: str) -> None:
    assert tracing.request_id(given) == given


@pytest.mark.parametrize("given", [None, "", "a" * 129, "has space", 'quote"', "new\nline", "tab\t", "ünïcode", "a;b"])
def test_an_unsafe_or_missing_request_id_is_replaced_by_a_fresh_one(given: str | None) -> None:
    made = tracing.request_id(given)
    assert made != given and len(made) == 32 and int(made, 16) >= 0
    assert tracing.request_id(given) != made  # fresh each time


@pytest.mark.anyio
async def test_the_request_id_is_echoed_or_generated_on_every_route(client: httpx.AsyncClient) -> None:
    sent = await client.post("/models/tab/score", json={"inputs": [[3.0] * 5]}, headers={"X-Request-ID": "req-42"})
    assert sent.status_code == 200 and sent.headers["x-request-id"] == "req-42"
    refused = await client.post("/models/tab/score", json={"inputs": [[3.0] * 4]}, headers={"X-Request-ID": "req-43"})
    assert refused.status_code == 422 and refused.headers["x-request-id"] == "req-43"
    probes = [await client.get("/healthz"), await client.get("/v2/health/live"), await client.get("/no/such")]
    ids = {response.headers["x-request-id"] for response in probes}
    assert len(ids) == 3 and all(len(made) == 32 for made in ids)
    unsafe = await client.get("/healthz", headers={"X-Request-ID": "<script>"})
    assert unsafe.headers["x-request-id"] != "<script>" and len(unsafe.headers["x-request-id"]) == 32


# --- turned on by the environment only ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "ae"}, False),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_on_only_when_the_opentelemetry_variables_ask(env: dict[str, str], on: bool) -> None:
    assert tracing.wanted(env) is on


def exporter_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith(EXPORTER_THREAD)]


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_exporter_threads_run_only_while_tracing_is_on(protocol: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    assert not tracing.start() and not tracing.ENABLED
    assert exporter_threads() == []
    # Nothing listens there: the exporter's thread starts without a collector, and stop() does not hang.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    assert tracing.start() and tracing.ENABLED
    try:
        assert len(exporter_threads()) == 1
    finally:
        tracing.stop()
    assert not tracing.ENABLED and exporter_threads() == []


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "zipkin"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "http/json"),
    ],
)
def test_an_exporter_or_protocol_that_does_not_exist_stops_the_start(env: dict[str, str], named: str) -> None:
    with pytest.raises(tracing.TracingConfigError, match=named):
        tracing.start(env=env)
    assert not tracing.ENABLED


@pytest.mark.anyio
async def test_with_tracing_off_no_span_is_made(client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    headers = {"traceparent": TRACEPARENT}
    with caplog.at_level(logging.INFO, logger="service.requests"):
        response = await client.post("/models/tab/score", json={"inputs": [[3.0] * 5]}, headers=headers)
    assert response.status_code == 200 and not tracing.ENABLED
    [line] = [record for record in caplog.records if record.name == "service.requests"]
    assert line.fields["trace_id"] is None and line.fields["model"] == "tab"  # type: ignore[attr-defined]


# --- the spans of a request ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_rest_request_joins_the_callers_trace_with_its_parse_wait_run_and_encode(
    client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    headers = {"traceparent": TRACEPARENT, "X-Request-ID": "req-7"}
    response = await client.post("/models/tab/versions/2/score", json={"inputs": [[3.0] * 5] * 3}, headers=headers)
    assert response.status_code == 200

    found = of_trace(spans, TRACE_ID)
    server = found["POST /models/{model}/versions/{version}/score"]
    assert server.parent is not None and f"{server.parent.span_id:016x}" == PARENT_ID
    assert server.attributes is not None
    assert server.attributes["request.id"] == "req-7"
    assert server.attributes["http.response.status_code"] == 200
    assert (server.attributes["model"], server.attributes["model.version"]) == ("tab", 2)
    assert server.attributes["operation"] == "score" and server.attributes["rows"] == 3
    for name in ("parse", "queue wait", "onnxruntime run", "encode"):
        child = found[name]
        assert child.parent is not None and child.parent.span_id == server.context.span_id, name
        assert server.start_time is not None and child.start_time is not None and child.end_time is not None
        assert server.end_time is not None
        assert server.start_time <= child.start_time <= child.end_time <= server.end_time, name
    run = found["onnxruntime run"].attributes
    assert run is not None
    assert (run["model"], run["model.version"], run["graph"], run["rows"]) == ("tab", 2, "scorer", 3)
    assert run["batch.rows"] >= 3 and run["batch.requests"] >= 1
    parse, wait, ran, encode = (found[name] for name in ("parse", "queue wait", "onnxruntime run", "encode"))
    assert parse.end_time <= wait.start_time and wait.end_time <= ran.start_time  # type: ignore[operator]
    assert ran.end_time <= encode.start_time  # type: ignore[operator]


@pytest.mark.anyio
async def test_without_a_traceparent_a_request_starts_its_own_trace(
    client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    response = await client.post("/models/tab/score", json={"inputs": [[3.0] * 5]})
    assert response.status_code == 200
    [server] = [span for span in spans.get_finished_spans() if span.name == "POST /models/{model}/score"]
    assert server.parent is None
    children = [
        span for span in spans.get_finished_spans() if span.parent and span.parent.span_id == server.context.span_id
    ]
    assert {span.name for span in children} == {"parse", "queue wait", "onnxruntime run", "encode"}


@pytest.mark.anyio
async def test_a_refused_request_is_a_span_with_its_status(
    client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    response = await client.post(
        "/models/tab/score", json={"inputs": [[3.0] * 4]}, headers={"traceparent": TRACEPARENT}
    )
    assert response.status_code == 422
    found = of_trace(spans, TRACE_ID)
    server = found["POST /models/{model}/score"]
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 422
    assert "onnxruntime run" not in found and "parse" in found


@pytest.mark.anyio
async def test_a_v2_infer_request_has_its_wait_and_run(client: httpx.AsyncClient, spans: InMemorySpanExporter) -> None:
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 5], "data": [3.0] * 10}],
        "outputs": [{"name": "score"}],
    }
    response = await client.post("/v2/models/tab/infer", json=body, headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200, response.text
    found = of_trace(spans, TRACE_ID)
    server = found["POST /v2/models/{model}/infer"]
    assert server.attributes is not None and server.attributes["operation"] == "infer"
    assert server.attributes["model"] == "tab" and server.attributes["rows"] == 2
    run = found["onnxruntime run"]
    assert run.parent is not None and run.parent.span_id == server.context.span_id


@pytest.mark.anyio
async def test_requests_that_share_a_batch_each_get_the_run_in_their_own_trace(
    slow_batches_app: FastAPI, spans: InMemorySpanExporter
) -> None:
    trace_ids = [f"{i + 1:032x}" for i in range(6)]
    async with client_of(slow_batches_app) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    "/models/tab/score",
                    json={"inputs": [[3.0] * 5] * (i + 1)},
                    headers={"traceparent": f"00-{trace_id}-{PARENT_ID}-01"},
                )
                for i, trace_id in enumerate(trace_ids)
            )
        )
    assert all(response.status_code == 200 for response in responses)
    runs = [of_trace(spans, trace_id)["onnxruntime run"] for trace_id in trace_ids]
    attributes = [run.attributes for run in runs]
    assert [a["rows"] for a in attributes if a is not None] == [1, 2, 3, 4, 5, 6]
    shared = [a for a in attributes if a is not None and a["batch.requests"] > 1]
    assert shared, "no two requests ran in one batch"
    # The requests of one run see the same run: its rows, requests and time.
    for a, run in zip(attributes, runs, strict=True):
        assert a is not None
        peers = [other for other in runs if other.start_time == run.start_time]
        assert len(peers) == a["batch.requests"]
        assert a["batch.rows"] == sum(peer.attributes["rows"] for peer in peers if peer.attributes is not None)


def test_outside_a_traced_request_a_span_is_one_shared_do_nothing_context() -> None:
    assert tracing.span("a") is tracing.span("b")
    with tracing.span("x") as made:
        assert made is None


class Collector(TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []

    def Export(self, request: ExportTraceServiceRequest, context: object) -> ExportTraceServiceResponse:
        self.requests.append(request)
        return ExportTraceServiceResponse()


@pytest.mark.anyio
async def test_spans_reach_an_otlp_grpc_collector(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    collector = Collector()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "ae-grpc-export")
        assert tracing.start()
        try:
            headers = {"traceparent": TRACEPARENT}
            response = await client.post("/models/tab/score", json={"inputs": [[3.0] * 5]}, headers=headers)
            assert response.status_code == 200
        finally:
            tracing.stop()  # sends what is buffered
    finally:
        server.stop(None)
    spans = [
        (span, resource.resource)
        for request in collector.requests
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    names = {span.name for span, _ in spans if span.trace_id.hex() == TRACE_ID}
    assert names == {"POST /models/{model}/score", "parse", "queue wait", "onnxruntime run", "encode"}
    service_names = {a.value.string_value for _, r in spans for a in r.attributes if a.key == "service.name"}
    assert service_names == {"ae-grpc-export"}


@pytest.mark.anyio
async def test_a_request_its_caller_did_not_sample_makes_no_span_but_keeps_its_trace_id(
    client: httpx.AsyncClient, spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    unsampled = f"00-{TRACE_ID}-{PARENT_ID}-00"
    with caplog.at_level(logging.INFO, logger="service.requests"):
        response = await client.post(
            "/models/tab/score", json={"inputs": [[3.0] * 5]}, headers={"traceparent": unsampled}
        )
    assert response.status_code == 200
    assert spans.get_finished_spans() == ()
    [line] = [record for record in caplog.records if record.name == "service.requests"]
    assert line.fields["trace_id"] == TRACE_ID and line.fields["queue_wait_ms"] >= 0  # type: ignore[attr-defined]
