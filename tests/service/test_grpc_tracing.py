"""gRPC calls traced and identified as HTTP requests are: an in-process gRPC server over the test app, its
spans in an in-memory exporter, joined to the caller's traceparent metadata."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service.grpc import open_inference_pb2 as pb
from service.grpc import open_inference_pb2_grpc as pb_grpc
from service.grpc.servicer import InferenceServicer, handlers
from tests.poll import wait_until_async
from tests.service.test_tracing import PARENT_ID, TRACE_ID, TRACEPARENT, of_trace

pytestmark = pytest.mark.anyio


@pytest.fixture
async def stub(app: FastAPI) -> AsyncIterator[pb_grpc.GRPCInferenceServiceStub]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handlers(InferenceServicer(app)),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.GRPCInferenceServiceStub(channel)
    finally:
        await server.stop(None)


def request() -> pb.ModelInferRequest:
    contents = pb.InferTensorContents(fp32_contents=[3.0] * 10)
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[2, 5], contents=contents)
    return pb.ModelInferRequest(model_name="tab", inputs=[tensor])


async def test_a_call_joins_the_callers_trace_with_its_parse_queue_run_and_encode_spans(
    spans: InMemorySpanExporter, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    call = stub.ModelInfer(request(), metadata=(("traceparent", TRACEPARENT), ("x-request-id", "grpc-7")))
    await call
    assert dict(await call.trailing_metadata())["x-request-id"] == "grpc-7"
    name = "inference.GRPCInferenceService/ModelInfer"
    await wait_until_async(lambda: name in of_trace(spans, TRACE_ID), message="the call's span ended")
    traced = of_trace(spans, TRACE_ID)
    server = traced["inference.GRPCInferenceService/ModelInfer"]
    assert server.parent is not None and f"{server.parent.span_id:016x}" == PARENT_ID
    assert server.attributes is not None and server.attributes["request.id"] == "grpc-7"
    assert {"parse", "queue wait", "onnxruntime run", "encode"} <= set(traced)
    for child in ("parse", "queue wait", "onnxruntime run", "encode"):
        parent = traced[child].parent
        assert parent is not None and parent.span_id == server.context.span_id, child


async def test_a_refused_call_is_traced_with_its_status(
    spans: InMemorySpanExporter, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    bad = request()
    bad.inputs[0].shape[:] = [2, 4]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ModelInfer(bad, metadata=(("traceparent", TRACEPARENT),))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The status reaches the client before the server's handler has left its span.
    name = "inference.GRPCInferenceService/ModelInfer"
    await wait_until_async(lambda: name in of_trace(spans, TRACE_ID), message="the refused call's span ended")
    server = of_trace(spans, TRACE_ID)[name]
    assert server.attributes is not None and server.attributes["status"] == "INVALID_ARGUMENT"
    assert len(dict(refused.value.trailing_metadata() or ())["x-request-id"]) == 32
