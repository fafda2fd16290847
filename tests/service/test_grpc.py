"""gRPC (the Open Inference Protocol's GRPCInferenceService, health, reflection) against a real `python -m
service`: the widely used clients unmodified (each in a process of its own: tests/service/v2_clients.py),
every bad request's status code and message, deadlines, keys, the repository RPCs, metrics, and a model
published while a client keeps calling. Answers equal the REST routes' for the same rows."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from service.grpc import open_inference_pb2 as pb
from service.grpc import open_inference_pb2_grpc as pb_grpc
from tests.poll import wait_until
from tests.service.scrape import sample
from tests.service.servers import ROOT, free_port, running_process, running_server

pytestmark = pytest.mark.e2e

CLIENTS = ROOT / "tests" / "service" / "v2_clients.py"
ROWS = np.array([[3.0, 3.1, 2.9, 3.0, 3.2], [2.0, 4.0, 3.0, 1.0, 5.0], [3.3, 2.8, 3.1, 2.9, 3.0]], np.float32)


class Server:
    def __init__(self, http: httpx.Client, grpc_port: int, models: Path, pid: int = 0) -> None:
        self.http, self.models, self.pid = http, models, pid
        self.address = f"127.0.0.1:{grpc_port}"
        self.channel = grpc.insecure_channel(self.address)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)


@pytest.fixture(scope="module")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Two workers on a copy of the test models (the publishing test adds a version), polled every 0.2 s."""
    root = tmp_path_factory.mktemp("grpc")
    models = root / "models"
    shutil.copytree(models_dir, models)
    port = free_port()
    flags = ["--grpc-port", str(port), "--workers", "2", "--intra-op-threads", "1", "--reload-interval", "0.2"]
    with running_process(models, root / "server.log", *flags) as (process, http):
        serving = Server(http, port, models, process.pid)
        wait_until(lambda: _ready(serving), timeout=30, message="gRPC serving in both workers")
        yield serving
        serving.channel.close()


def _ready(server: Server) -> bool:
    try:
        return bool(server.stub.ServerReady(pb.ServerReadyRequest(), timeout=2).ready)
    except grpc.RpcError:
        return False


def client(name: str, address: str, form: str, outputs: list[str], **parameters: Any) -> dict[str, np.ndarray]:
    """One inference of ROWS on model tab through `name`, unmodified, in a process of its own."""
    asked = json.dumps({"x": ROWS.tolist(), "outputs": outputs, "parameters": parameters})
    command = [sys.executable, str(CLIENTS), name, address, "tab", form]
    done = subprocess.run(command, input=asked, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return {key: np.asarray(value) for key, value in json.loads(done.stdout).items()}


def rest(server: Server) -> dict[str, np.ndarray]:
    """The REST routes' answers for ROWS on tab's default version."""

    def post(operation: str) -> dict[str, Any]:
        answer = server.http.post(f"/models/tab/{operation}", json={"inputs": ROWS.tolist()})
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    scored, encoded, reconstructed = post("score"), post("encode"), post("reconstruct")
    return {
        "score": np.asarray(scored["scores"]),
        "is_anomaly": np.asarray(scored["is_anomaly"]),
        "x_hat": np.asarray(reconstructed["reconstructions"]),
        "z": np.asarray(encoded["latents"]),
    }


OUTPUTS = ["z", "x_hat", "score", "is_anomaly"]
FORMS = [
    ("triton-grpc", "grpc", "binary"),
    ("triton-http", "http", "binary"),
    ("triton-http", "http", "typed"),
    ("kserve-grpc", "grpc", "binary"),
    ("kserve-grpc", "grpc", "typed"),
    ("kserve-rest", "http", "binary"),
    ("kserve-rest", "http", "typed"),
]


@pytest.mark.parametrize(("name", "transport", "form"), FORMS, ids=[f"{name}-{form}" for name, _, form in FORMS])
def test_widely_used_clients_get_the_rest_routes_answers(server: Server, name: str, transport: str, form: str) -> None:
    address = server.address if transport == "grpc" else str(server.http.base_url).removeprefix("http://").rstrip("/")
    answer = client(name, address, form, OUTPUTS)
    expected = rest(server)
    for output in ("z", "x_hat", "score"):
        np.testing.assert_allclose(
            answer[output].reshape(expected[output].shape), expected[output], rtol=1e-5, atol=1e-6
        )
    assert answer["is_anomaly"].astype(bool).tolist() == expected["is_anomaly"].tolist()


def test_top_features_and_the_threshold_through_triton_grpc(server: Server) -> None:
    answer = client("triton-grpc", server.address, "binary", ["top_features", "top_features_share"], top_features=2)
    reference = server.http.post("/models/tab/score", json={"inputs": ROWS.tolist(), "top_features": 2})
    assert reference.status_code == 200, reference.text
    names = [[item["feature"] for item in row] for row in reference.json()["top_features"]]
    assert answer["top_features"].reshape(3, 2).tolist() == names
    assert answer["top_features_share"].shape == (3, 2)


def infer(server: Server, **fields: Any) -> pb.ModelInferResponse:
    request = pb.ModelInferRequest(model_name="tab", **fields)
    return server.stub.ModelInfer(request, timeout=10)


def typed_x(rows: np.ndarray = ROWS, name: str = "x") -> pb.ModelInferRequest.InferInputTensor:
    contents = pb.InferTensorContents(fp32_contents=rows.ravel().tolist())
    return pb.ModelInferRequest.InferInputTensor(name=name, datatype="FP32", shape=list(rows.shape), contents=contents)


def typed_z() -> pb.ModelInferRequest.InferInputTensor:
    contents = pb.InferTensorContents(fp32_contents=[0.0, 0.0])
    return pb.ModelInferRequest.InferInputTensor(name="z", datatype="FP32", shape=[1, 2], contents=contents)


def raw_x(shape: list[int], datatype: str = "FP32") -> pb.ModelInferRequest.InferInputTensor:
    return pb.ModelInferRequest.InferInputTensor(name="x", datatype=datatype, shape=shape)


def test_raw_requests_get_raw_outputs_and_typed_ones_typed(server: Server) -> None:
    raw = infer(server, inputs=[raw_x([3, 5])], raw_input_contents=[ROWS.tobytes()])
    assert [output.name for output in raw.outputs] == ["z", "x_hat", "score", "is_anomaly", "percentile", "sq_err"]
    score = np.frombuffer(raw.raw_output_contents[3 - 1], np.float32)
    typed = infer(server, inputs=[typed_x()])
    assert not typed.raw_output_contents
    np.testing.assert_allclose(np.asarray(typed.outputs[2].contents.fp32_contents), score, rtol=1e-6)
    np.testing.assert_allclose(score, rest(server)["score"], rtol=1e-5)
    assert raw.model_name == "tab" and raw.model_version == "2"
    assert raw.parameters["threshold"].double_param > 0


def test_other_datatypes_are_read_as_http_v2_reads_them(server: Server) -> None:
    expected = infer(server, inputs=[typed_x()]).outputs[2].contents.fp32_contents
    for datatype, dtype in (("FP64", np.float64), ("FP16", np.float16), ("INT64", np.int64), ("UINT8", np.uint8)):
        rows = np.rint(ROWS).astype(dtype) if np.dtype(dtype).kind in "iu" else ROWS.astype(dtype)
        answer = infer(server, inputs=[raw_x([3, 5], datatype)], raw_input_contents=[rows.tobytes()])
        reference = infer(server, inputs=[typed_x(rows.astype(np.float32))])
        got = np.frombuffer(answer.raw_output_contents[2], np.float32)
        np.testing.assert_allclose(got, reference.outputs[2].contents.fp32_contents, rtol=1e-5)
        if datatype == "FP64":
            np.testing.assert_allclose(got, expected, rtol=1e-5)
    typed_int = pb.ModelInferRequest.InferInputTensor(
        name="x", datatype="INT32", shape=[1, 5], contents=pb.InferTensorContents(int_contents=[3, 3, 3, 3, 3])
    )
    assert len(infer(server, inputs=[typed_int]).outputs) == 6


def bad(shape: list[int], raw: bytes, datatype: str = "FP32") -> dict[str, Any]:
    return {"inputs": [raw_x(shape, datatype)], "raw_input_contents": [raw]}


ONE_ROW = ROWS[:1].tobytes()
# id, request fields (model tab), gRPC status, a phrase of the message (the HTTP V2 route's)
# fmt: off
BAD: list[tuple[str, dict[str, Any], grpc.StatusCode, str]] = [
    ("no inputs", {}, grpc.StatusCode.INVALID_ARGUMENT, "inputs must be a non-empty list"),
    ("two inputs", {"inputs": [typed_x(), typed_z()]}, grpc.StatusCode.INVALID_ARGUMENT, "give exactly one input"),
    ("unknown input", {"inputs": [typed_x(name="y")]}, grpc.StatusCode.INVALID_ARGUMENT, "give exactly one input"),
    ("raw size does not match", bad([1, 5], ONE_ROW[:-4]), grpc.StatusCode.INVALID_ARGUMENT, "holds 16 bytes"),
    ("raw count does not match", {"inputs": [raw_x([1, 5])], "raw_input_contents": [ONE_ROW, ONE_ROW]},
     grpc.StatusCode.INVALID_ARGUMENT, "2 buffers for 1 inputs"),
    ("wrong row width", bad([1, 4], ONE_ROW[:16]), grpc.StatusCode.INVALID_ARGUMENT, "5"),
    ("BYTES input", bad([1, 5], ONE_ROW, "BYTES"), grpc.StatusCode.INVALID_ARGUMENT, "BYTES tensors are not taken"),
    ("unknown datatype", bad([1, 5], ONE_ROW, "FP8"), grpc.StatusCode.INVALID_ARGUMENT, "is not one of"),
    ("FP16 typed", {"inputs": [pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP16", shape=[1, 5])]},
     grpc.StatusCode.INVALID_ARGUMENT, "has no typed contents"),
    ("contents of the wrong type", {"inputs": [pb.ModelInferRequest.InferInputTensor(
        name="x", datatype="FP32", shape=[1, 5], contents=pb.InferTensorContents(fp64_contents=[0] * 5))]},
     grpc.StatusCode.INVALID_ARGUMENT, "go in contents.fp32_contents"),
    ("too few values", {"inputs": [pb.ModelInferRequest.InferInputTensor(
        name="x", datatype="FP32", shape=[1, 5], contents=pb.InferTensorContents(fp32_contents=[0] * 4))]},
     grpc.StatusCode.INVALID_ARGUMENT, "has 4 values, shape [1, 5] needs 5"),
    ("UINT8 out of range", {"inputs": [pb.ModelInferRequest.InferInputTensor(
        name="x", datatype="UINT8", shape=[1, 5], contents=pb.InferTensorContents(uint_contents=[300] * 5))]},
     grpc.StatusCode.INVALID_ARGUMENT, "whole numbers from 0 to 255"),
    ("NaN", bad([1, 5], np.full((1, 5), np.nan, np.float32).tobytes()), grpc.StatusCode.INVALID_ARGUMENT, "finite"),
    ("negative axis", bad([-1, 5], ONE_ROW), grpc.StatusCode.INVALID_ARGUMENT, "non-negative integers"),
    ("huge axis", bad([2**40, 5], ONE_ROW), grpc.StatusCode.INVALID_ARGUMENT, "has an axis over"),
    ("too many rows", bad([2000, 5], np.zeros((2000, 5), np.float32).tobytes()),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "1024"),
    ("unknown output", {"inputs": [typed_x()], "outputs": [pb.ModelInferRequest.InferRequestedOutputTensor(name="q")]},
     grpc.StatusCode.INVALID_ARGUMENT, "cannot be computed from x"),
    ("bad top_features", {"inputs": [typed_x()], "outputs": [
        pb.ModelInferRequest.InferRequestedOutputTensor(name="top_features")],
        "parameters": {"top_features": pb.InferParameter(string_param="many")}},
     grpc.StatusCode.INVALID_ARGUMENT, "positive integer"),
]
# fmt: on


@pytest.mark.parametrize(("fields", "code", "phrase"), [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_requests_get_the_http_messages_as_grpc_status(
    server: Server, fields: dict[str, Any], code: grpc.StatusCode, phrase: str
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        infer(server, **fields)
    assert refused.value.code() == code, refused.value.details()
    assert phrase in (refused.value.details() or "")
    assert len(infer(server, inputs=[typed_x()]).outputs) == 6  # still serving


def test_unknown_models_and_versions_are_not_found(server: Server) -> None:
    for model, version, phrase in (("nope", "", "unknown model 'nope'"), ("tab", "9", "version"), ("tab", "x", "")):
        with pytest.raises(grpc.RpcError) as refused:
            server.stub.ModelInfer(
                pb.ModelInferRequest(model_name=model, model_version=version, inputs=[typed_x()]), timeout=10
            )
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND and phrase in (refused.value.details() or "")
    with pytest.raises(grpc.RpcError) as broken:
        server.stub.ModelMetadata(pb.ModelMetadataRequest(name="zz-broken"), timeout=10)
    assert broken.value.code() == grpc.StatusCode.UNAVAILABLE


def test_metadata_readiness_and_health(server: Server) -> None:
    stub = server.stub
    assert stub.ServerLive(pb.ServerLiveRequest()).live and stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="tab", version="1")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="nope")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="zz-broken")).ready
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="tab"))
    http = server.http.get("/v2/models/tab").json()
    assert list(metadata.versions) == http["versions"] and metadata.platform == http["platform"]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        (t["name"], t["datatype"], t["shape"]) for t in http["inputs"]
    ]
    assert "model_repository" in stub.ServerMetadata(pb.ServerMetadataRequest()).extensions
    health = health_pb2_grpc.HealthStub(server.channel)
    for service in ("", "inference.GRPCInferenceService"):
        assert (
            health.Check(health_pb2.HealthCheckRequest(service=service)).status
            == health_pb2.HealthCheckResponse.SERVING
        )
    with pytest.raises(grpc.RpcError) as unknown:
        health.Check(health_pb2.HealthCheckRequest(service="no.Such"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_services(server: Server) -> None:
    """What grpcurl does: list the services, then resolve ModelInfer's request type by reflection alone."""
    database = ProtoReflectionDescriptorDatabase(server.channel)
    services = set(database.get_services())
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services
    from google.protobuf.descriptor_pool import DescriptorPool

    pool = DescriptorPool(database)
    method = pool.FindServiceByName("inference.GRPCInferenceService").FindMethodByName("ModelInfer")
    assert method.input_type.full_name == "inference.ModelInferRequest"
    assert "raw_input_contents" in method.input_type.fields_by_name


def test_a_passed_deadline_is_deadline_exceeded_and_the_service_serves_on(server: Server) -> None:
    rows = np.random.default_rng(0).normal(3, 1, (1024, 5)).astype(np.float32)
    with pytest.raises(grpc.RpcError) as late:
        server.stub.ModelInfer(
            pb.ModelInferRequest(model_name="tab", inputs=[raw_x([1024, 5])], raw_input_contents=[rows.tobytes()]),
            timeout=0.0005,
        )
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(infer(server, inputs=[typed_x()]).outputs) == 6


def test_requests_count_under_the_grpc_protocol(server: Server) -> None:
    def counted() -> float:
        return sample(server.http.get("/metrics").text, "ae_requests_total", model="tab", protocol="grpc")

    before = counted()
    for _ in range(3):
        infer(server, inputs=[typed_x()])
    wait_until(lambda: counted() >= before + 3, timeout=10, message="three gRPC requests counted")


def test_a_version_published_while_a_client_calls_fails_no_call(server: Server) -> None:
    failures: list[str] = []
    answered = [0]
    stop = threading.Event()

    def call() -> None:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while not stop.is_set():
                try:
                    stub.ModelInfer(pb.ModelInferRequest(model_name="tab", inputs=[typed_x()]), timeout=10)
                    answered[0] += 1
                except grpc.RpcError as error:
                    failures.append(f"{error.code()}: {error.details()}")

    callers = [threading.Thread(target=call) for _ in range(2)]
    for caller in callers:
        caller.start()
    try:
        wait_until(lambda: answered[0] >= 20, timeout=30, message="calls answered before publishing")
        staged = server.models / ".staging-tab-3"
        shutil.copytree(server.models / "tab" / "1", staged)
        manifest = json.loads((staged / "manifest.json").read_text())
        (staged / "manifest.json").write_text(json.dumps(manifest | {"version": 3}))
        staged.rename(server.models / "tab" / "3")

        def serves_three() -> bool:
            return (
                server.stub.ModelInfer(pb.ModelInferRequest(model_name="tab", inputs=[typed_x()])).model_version == "3"
            )

        wait_until(serves_three, timeout=30, message="tab/3 serving")
        settled = answered[0]
        wait_until(lambda: answered[0] >= settled + 20, timeout=30, message="calls answered after publishing")
    finally:
        stop.set()
        for caller in callers:
            caller.join(timeout=30)
    assert failures == []


@pytest.fixture(scope="module")
def keyed(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One worker with API keys and the repository API (admin keys)."""
    root = tmp_path_factory.mktemp("grpc-keys")
    port = free_port()
    flags = ["--grpc-port", str(port), "--api-keys", "user-key", "--admin-keys", "admin-key", "--intra-op-threads", "1"]
    with running_server(models_dir, root / "server.log", *flags, env={"AE_RELOAD_INTERVAL": "0"}) as http:
        http.headers["Authorization"] = "Bearer user-key"
        serving = Server(http, port, models_dir)
        wait_until(lambda: _ready(serving), timeout=30, message="gRPC serving")
        yield serving
        serving.channel.close()


def test_api_keys_are_asked_as_metadata(keyed: Server) -> None:
    request = pb.ModelInferRequest(model_name="tab", inputs=[typed_x()])
    for metadata in ((), (("authorization", "Bearer wrong"),), (("x-api-key", "admin"),)):
        with pytest.raises(grpc.RpcError) as refused:
            keyed.stub.ModelInfer(request, metadata=metadata, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "send an API key" in (refused.value.details() or "")
    for metadata in ((("authorization", "Bearer user-key"),), (("x-api-key", "user-key"),)):
        assert len(keyed.stub.ModelInfer(request, metadata=metadata, timeout=10).outputs) == 6
    # Probes stay open, as /v2/health/* do.
    assert keyed.stub.ServerReady(pb.ServerReadyRequest()).ready
    health = health_pb2_grpc.HealthStub(keyed.channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING


def test_the_repository_rpcs_need_an_admin_key(keyed: Server) -> None:
    admin = (("authorization", "Bearer admin-key"),)
    with pytest.raises(grpc.RpcError) as refused:
        keyed.stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=(("authorization", "Bearer user-key"),))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    index = keyed.stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), metadata=admin)
    assert {(model.name, model.version, model.state) for model in index.models} >= {("tab", "1", "READY")}
    keyed.stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="conv"), metadata=admin)
    user = (("authorization", "Bearer user-key"),)
    assert not keyed.stub.ModelReady(pb.ModelReadyRequest(name="conv"), metadata=user).ready
    keyed.stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="conv"), metadata=admin)
    assert keyed.stub.ModelReady(pb.ModelReadyRequest(name="conv"), metadata=user).ready
    with pytest.raises(grpc.RpcError) as unknown:
        keyed.stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="nope"), metadata=admin)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.fixture(scope="module")
def busy(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One worker whose graphs wait 4 s for company before a run and let rows wait 1 µs (a request waiting in
    a graph's queue leaves no room for another), taking messages of at most 64 KiB."""
    root = tmp_path_factory.mktemp("grpc-busy")
    port = free_port()
    flags = ["--grpc-port", str(port), "--workers", "1", "--batch-wait-ms", "4000", "--max-queue-wait-ms", "0.001"]
    with running_server(models_dir, root / "server.log", *flags, "--max-body-bytes", "65536") as http:
        serving = Server(http, port, models_dir)
        wait_until(lambda: _ready(serving), timeout=30, message="gRPC serving")
        yield serving
        serving.channel.close()


def test_an_overloaded_model_is_unavailable_with_when_to_retry(busy: Server) -> None:
    request = pb.ModelInferRequest(model_name="tab", inputs=[typed_x()])
    waiting = threading.Thread(target=lambda: busy.stub.ModelInfer(request, timeout=30))
    waiting.start()
    try:
        with pytest.raises(grpc.RpcError) as refused:
            for _ in range(200):  # the first ones may arrive before the waiting one has queued
                busy.stub.ModelInfer(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        trailing = dict(refused.value.trailing_metadata() or ())
        assert trailing["retry-after"] == "1" and trailing["grpc-retry-pushback-ms"] == "1000"
    finally:
        waiting.join(timeout=30)


def test_a_message_over_the_body_limit_is_resource_exhausted(busy: Server) -> None:
    rows = np.zeros((1000, 5), np.float32)  # 20 kB of values: fits
    big = np.zeros((4000, 5), np.float32)  # 80 kB: over 64 KiB
    with pytest.raises(grpc.RpcError) as refused:
        busy.stub.ModelInfer(
            pb.ModelInferRequest(model_name="tab", inputs=[raw_x([4000, 5])], raw_input_contents=[big.tobytes()]),
            timeout=30,
        )
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    fits = pb.ModelInferRequest(model_name="tab", inputs=[raw_x([1000, 5])], raw_input_contents=[rows.tobytes()])
    assert len(busy.stub.ModelInfer(fits, timeout=30).outputs) == 6


def test_a_message_that_is_not_a_model_infer_request_is_invalid_argument(server: Server) -> None:
    call = server.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    for garbage in (b"\xff" * 64, pb.ModelInferRequest(model_name="tab").SerializeToString()[:-1] + b"\x0a\x05a"):
        with pytest.raises(grpc.RpcError) as refused:
            call(garbage, timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a ModelInferRequest" in (refused.value.details() or "")
    assert len(infer(server, inputs=[typed_x()]).outputs) == 6


def test_a_long_model_name_is_not_found_and_quoted_short(server: Server) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        server.stub.ModelInfer(pb.ModelInferRequest(model_name="m" * 100_000, inputs=[typed_x()]), timeout=10)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert "(100000 characters)" in (refused.value.details() or "") and len(refused.value.details() or "") < 200


def _workers_rss(server: Server) -> int:
    return sum(child.memory_info().rss for child in psutil.Process(server.pid).children())


def test_refused_large_messages_leave_no_memory_behind(server: Server) -> None:
    """Each is 12 MB of shape, refused: the request and what was made of it go with the call (before, they
    waited in reference cycles for the garbage collector, several GB for a few such calls)."""
    before = _workers_rss(server)
    request = pb.ModelInferRequest(model_name="tab", inputs=[raw_x([1] * 6_000_000)], raw_input_contents=[b""])
    for _ in range(8):
        with pytest.raises(grpc.RpcError) as refused:
            server.stub.ModelInfer(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _workers_rss(server) - before < 300 * 1024 * 1024
