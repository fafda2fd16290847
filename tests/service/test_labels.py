"""The label column a table model was trained with is ignored when scoring: the very CSV it was trained on
scores, as a CSV body, as named JSON rows and in a batch job, with the scores of the same rows without it;
the answer then says how well the scores separate the labels' classes (AUROC, as scikit-learn computes it).
Any other unknown column is still refused. The rule for which label is an anomaly is the training side's.

Against a real server process serving a package the training code made from that CSV."""

from __future__ import annotations

import csv
import json
import shutil
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from service import dataplane, labels, v2_codec
from service.batch.config import BatchConfig
from service.batch.jobs import run_job
from service.errors import ServiceError
from service.grpc import open_inference_pb2 as pb
from service.grpc import open_inference_pb2_grpc as pb_grpc
from tests.poll import wait_until
from tests.service.labelled import ANOMALOUS, FEATURES, LABEL, MODEL, NORMAL, table, train, write_csv
from tests.service.registries import serving
from tests.service.servers import free_port, running_server
from training.data import load_dataset, normal_mask

CSV = {"content-type": "text/csv"}
SCORE = f"/models/{MODEL}/score"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return train(tmp_path_factory.mktemp("labelled"))


@pytest.fixture(scope="module")
def served(trained: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, str]]:
    """The labelled package, and beside it a copy whose manifest records no label column (`nolabel`): the
    HTTP client, and the gRPC address."""
    models, _ = trained
    served = tmp_path_factory.mktemp("served")
    shutil.copytree(models / MODEL, served / MODEL)
    shutil.copytree(models / MODEL / "1", served / "nolabel" / "1")
    manifest = json.loads((served / "nolabel" / "1" / "manifest.json").read_text())
    manifest["name"] = "nolabel"
    manifest["training"]["data"]["label_column"] = manifest["training"]["config"]["label_column"] = None
    (served / "nolabel" / "1" / "manifest.json").write_text(json.dumps(manifest))
    port = free_port()
    with running_server(served, served.parent / "server.log", "--grpc-port", str(port)) as client:
        yield client, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def server(served: tuple[httpx.Client, str]) -> httpx.Client:
    return served[0]


@pytest.fixture(scope="module")
def stub(served: tuple[httpx.Client, str]) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(served[1]) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        wait_until(lambda: _grpc_ready(stub), timeout=30, message="gRPC serving")
        yield stub


def _grpc_ready(stub: pb_grpc.GRPCInferenceServiceStub) -> bool:
    try:
        return bool(stub.ServerReady(pb.ServerReadyRequest(), timeout=2).ready)
    except grpc.RpcError:
        return False


def post(server: httpx.Client, path: str, status: int = 200, **request: Any) -> dict[str, Any]:
    answer = server.post(path, **request)
    assert answer.status_code == status, answer.text
    return answer.json()


def training_rows(path: Path) -> tuple[list[dict[str, str]], np.ndarray, list[str]]:
    """The training CSV's rows as objects of its cells, its features as float32, and its labels."""
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    x = np.array([[float(row[name]) for name in FEATURES] for row in rows], dtype=np.float32)
    return rows, x, [row[LABEL] for row in rows]


@pytest.mark.e2e
def test_the_training_csv_scores_as_its_features_alone(
    server: httpx.Client, trained: tuple[Path, Path], tmp_path: Path
) -> None:
    _, data = trained
    _, x, y = training_rows(data)
    bare = write_csv(tmp_path / "bare.csv", x, None).read_bytes()
    expected = post(server, SCORE, content=bare, headers=CSV)
    assert "labels" not in expected  # rows without the label column: the answer as it always was
    assert expected["scores"] == post(server, SCORE, json={"inputs": x.tolist()})["scores"]

    answer = post(server, SCORE, content=data.read_bytes(), headers=CSV)

    assert answer["scores"] == expected["scores"] and answer["is_anomaly"] == expected["is_anomaly"]
    is_anomaly = np.array(y) == ANOMALOUS
    assert answer["labels"] == {
        "column": LABEL,
        "normal": int((~is_anomaly).sum()),
        "anomalous": int(is_anomaly.sum()),
        "unlabelled": 0,
        "auroc": pytest.approx(roc_auc_score(is_anomaly, answer["scores"]), abs=1e-12),
        "note": None,
    }
    assert answer["labels"]["auroc"] > 0.8  # the model tells the classes apart: the number means something


@pytest.mark.e2e
def test_named_rows_with_the_label_score_as_without_it_on_every_route(
    server: httpx.Client, trained: tuple[Path, Path]
) -> None:
    _, data = trained
    cells, x, y = training_rows(data)
    named = [{name: float(row[name]) for name in row if name != LABEL} | {LABEL: row[LABEL]} for row in cells]
    without = [{name: value for name, value in row.items() if name != LABEL} for row in named]

    for operation, field in (("score", "scores"), ("encode", "latents"), ("reconstruct", "reconstructions")):
        path = f"/models/{MODEL}/{operation}"
        expected = post(server, path, json={"inputs": without})
        answer = post(server, path, json={"inputs": named})
        assert answer[field] == expected[field], operation
    answer = post(server, SCORE, json={"inputs": named})
    assert answer["scores"] == post(server, SCORE, json={"inputs": x.tolist()})["scores"]
    assert answer["labels"]["auroc"] == pytest.approx(roc_auc_score(np.array(y) == ANOMALOUS, answer["scores"]))
    one = post(server, SCORE, json={"inputs": named[0]})  # a single row, not in a list
    assert one["scores"] == answer["scores"][:1] and one["labels"]["note"].startswith("too few")


@pytest.mark.e2e
def test_labels_may_be_numbers_empty_or_missing(server: httpx.Client, trained: tuple[Path, Path]) -> None:
    _, data = trained
    cells, x, _ = training_rows(data)
    rows: list[dict[str, Any]] = [{name: float(row[name]) for name in FEATURES} for row in cells[:30]]
    rows[0][LABEL] = None
    rows[1][LABEL] = ""
    rows[2][LABEL] = 1.0  # not the normal label "B": an anomaly
    answer = post(server, SCORE, json={"inputs": rows})  # rows 3.. have no label at all
    assert answer["labels"] == {
        "column": LABEL,
        "normal": 0,
        "anomalous": 1,
        "unlabelled": 29,
        "auroc": None,
        "note": "too few anomalies to estimate (1 anomalous and 0 normal rows; it needs 10 of each)",
    }
    assert answer["scores"] == post(server, SCORE, json={"inputs": x[:30].tolist()})["scores"]


# id, request, status, message
# fmt: off
REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("csv: a typo beside the label", {"content": f"{LABEL},{','.join(FEATURES[:-1])},symetry\nB,{'1,' * 7}1",
     "headers": CSV}, "the CSV header must name each feature once: missing ['symmetry'], unknown ['symetry']"),
    ("csv: an unknown column beside the label", {"content": f"{LABEL},{','.join(FEATURES)},id\nB,{'1,' * 8}7",
     "headers": CSV}, "the CSV header must name each feature once: missing [], unknown ['id']"),
    ("csv: the label twice", {"content": f"{LABEL},{','.join(FEATURES)},{LABEL}\nB,{'1,' * 8}B", "headers": CSV},
     f"the CSV header must name each feature once: missing [], unknown [], repeated [{LABEL!r}]"),
    ("csv: a line without its label", {"content": f"{LABEL},{','.join(FEATURES)}\n{'1,' * 7}1", "headers": CSV},
     "CSV line 2 has 8 values; the header has 9 columns"),
    ("json: an unknown field beside the label", {"json": {"inputs": [dict.fromkeys(FEATURES, 1.0) | {LABEL: "B",
     "sex": 1}]}}, f"inputs: row 0 has unknown ['sex']; the features are {FEATURES}"),
    ("json: a label that is a list", {"json": {"inputs": [dict.fromkeys(FEATURES, 1.0) | {LABEL: ["B"]}]}},
     f"inputs: row 0's {LABEL!r} must be a string, number or null"),
]
# fmt: on


@pytest.mark.e2e
@pytest.mark.parametrize(("request_", "message"), [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED])
def test_other_columns_are_still_refused(server: httpx.Client, request_: dict[str, Any], message: str) -> None:
    answer = post(server, SCORE, status=422, **request_)
    assert answer["error"]["message"] == message
    assert server.get("/readyz").status_code == 200


@pytest.mark.e2e
def test_a_model_without_a_label_column_refuses_one(server: httpx.Client, trained: tuple[Path, Path]) -> None:
    _, data = trained
    answer = post(server, "/models/nolabel/score", status=422, content=data.read_bytes(), headers=CSV)
    assert answer["error"]["message"] == (
        f"the CSV header must name each feature once: missing [], unknown ['{LABEL}']"
    )


def length_prefixed(texts: list[str]) -> bytes:
    """BYTES elements as the binary tensor extension lays them out: a 4-byte little-endian length, the bytes."""
    return b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)


def expected_parameters(y: list[str], scores: list[float]) -> dict[str, Any]:
    is_anomaly = np.array(y) == ANOMALOUS
    return {
        "label_column": LABEL,
        "label_normal": int((~is_anomaly).sum()),
        "label_anomalous": int(is_anomaly.sum()),
        "label_unlabelled": 0,
        "auroc": pytest.approx(roc_auc_score(is_anomaly, scores), abs=1e-9),
    }


@pytest.mark.e2e
def test_v2_over_http_takes_the_label_column_beside_x(server: httpx.Client, trained: tuple[Path, Path]) -> None:
    _, data = trained
    _, x, y = training_rows(data)
    rest = post(server, SCORE, json={"inputs": x.tolist()})
    route = f"/v2/models/{MODEL}/infer"
    rows = {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
    label = {"name": LABEL, "datatype": "BYTES", "shape": [len(y)], "data": y}
    asked = {"outputs": [{"name": "score"}]}

    json_answer = post(server, route, json={"inputs": [rows, label], **asked})

    header = json.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": list(x.shape), "parameters": {"binary_data_size": x.nbytes}},
                {
                    "name": LABEL,
                    "datatype": "BYTES",
                    "shape": [len(y), 1],
                    "parameters": {"binary_data_size": len(length_prefixed(y))},
                },
            ],
            **asked,
        }
    ).encode()
    body = header + x.tobytes() + length_prefixed(y)
    headers = {"Inference-Header-Content-Length": str(len(header)), "content-type": "application/octet-stream"}
    binary_answer = post(server, route, content=body, headers=headers)
    for answer in (json_answer, binary_answer):
        [score] = answer["outputs"]
        assert score["data"] == pytest.approx(rest["scores"], rel=1e-6)
        assert answer["parameters"] == {"threshold": rest["threshold"], **expected_parameters(y, rest["scores"])}
    without = post(server, route, json={"inputs": [rows], **asked})
    assert without["outputs"] == json_answer["outputs"] and without["parameters"] == {"threshold": rest["threshold"]}


@pytest.mark.e2e
def test_v2_over_grpc_takes_the_label_column_beside_x(
    server: httpx.Client, stub: pb_grpc.GRPCInferenceServiceStub, trained: tuple[Path, Path]
) -> None:
    _, data = trained
    _, x, y = training_rows(data)
    rest = post(server, SCORE, json={"inputs": x.tolist()})
    asked = [pb.ModelInferRequest.InferRequestedOutputTensor(name="score")]
    typed = pb.ModelInferRequest(
        model_name=MODEL,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="x", datatype="FP32", shape=list(x.shape), contents=pb.InferTensorContents(fp32_contents=x.ravel())
            ),
            pb.ModelInferRequest.InferInputTensor(
                name=LABEL,
                datatype="BYTES",
                shape=[len(y)],
                contents=pb.InferTensorContents(bytes_contents=[label.encode() for label in y]),
            ),
        ],
        outputs=asked,
    )
    raw = pb.ModelInferRequest(
        model_name=MODEL,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=list(x.shape)),
            pb.ModelInferRequest.InferInputTensor(name=LABEL, datatype="BYTES", shape=[len(y), 1]),
        ],
        outputs=asked,
        raw_input_contents=[x.tobytes(), length_prefixed(y)],
    )
    for request in (typed, raw):
        answer = stub.ModelInfer(request, timeout=30)
        [scores] = answer.outputs
        got = scores.contents.fp32_contents or np.frombuffer(answer.raw_output_contents[0], "<f4").tolist()
        assert list(got) == pytest.approx(rest["scores"], rel=1e-6)
        parameters = {
            key: getattr(value, value.WhichOneof("parameter_choice")) for key, value in answer.parameters.items()
        }
        assert parameters == {"threshold": pytest.approx(rest["threshold"]), **expected_parameters(y, rest["scores"])}


# id, model, inputs beside x, message (HTTP V2's; gRPC's is the same)
# fmt: off
V2_REFUSED: list[tuple[str, str, list[dict[str, Any]], str]] = [
    ("a label per value, not per row", MODEL, [{"name": LABEL, "datatype": "BYTES", "shape": [2, 4],
     "data": ["B"] * 8}],
     f"input '{LABEL}': shape [2, 4]; the label column takes one value per row, [1]"),
    ("a BYTES label that is a number", MODEL, [{"name": LABEL, "datatype": "BYTES", "shape": [1], "data": [1]}],
     f"input '{LABEL}': a BYTES tensor's data must hold strings"),
    ("another input", MODEL, [{"name": "id", "datatype": "BYTES", "shape": [1], "data": ["a"]}],
     f"give exactly one input, x (rows) or z (latents), and beside x the label column '{LABEL}' if you like; "
     "got ['id', 'x']"),
    ("a label for a model without one", "nolabel", [{"name": LABEL, "datatype": "BYTES", "shape": [1], "data": ["B"]}],
     f"give exactly one input, x (rows) or z (latents); got ['{LABEL}', 'x']"),
]
# fmt: on


@pytest.mark.e2e
@pytest.mark.parametrize(("model", "beside", "message"), [c[1:] for c in V2_REFUSED], ids=[c[0] for c in V2_REFUSED])
def test_v2_refuses_other_inputs(server: httpx.Client, model: str, beside: list[dict[str, Any]], message: str) -> None:
    x = {"name": "x", "datatype": "FP32", "shape": [1, len(FEATURES)], "data": [3.0] * len(FEATURES)}
    answer = post(server, f"/v2/models/{model}/infer", status=400, json={"inputs": [x, *beside]})
    assert answer == {"error": message}


def test_a_batch_job_on_the_training_csv_gives_the_service_scores(trained: tuple[Path, Path], tmp_path: Path) -> None:
    models, data = trained
    config = BatchConfig(model=str(models / MODEL), input=str(data), output=str(tmp_path / "out"), progress=False)
    run_job(config)
    _, x, _ = training_rows(data)
    bare = write_csv(tmp_path / "bare.csv", x, None)
    run_job(BatchConfig(model=str(models / MODEL), input=str(bare), output=str(tmp_path / "bare"), progress=False))
    scores = pq.read_table(tmp_path / "out").column("score").to_pylist()
    assert scores == pq.read_table(tmp_path / "bare").column("score").to_pylist()


def test_auroc_equals_scikit_learns_with_ties() -> None:
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 20, size=500).astype(np.float32)  # many ties
    is_anomaly = rng.random(500) < 0.2
    assert labels.auroc(scores, is_anomaly) == pytest.approx(roc_auc_score(is_anomaly, scores), abs=1e-12)


# cells of the label column as a CSV holds them, the normal label, expected anomalies (None: labels say nothing)
# fmt: off
RULES: list[tuple[list[str], str | None, list[bool] | None]] = [
    (["B", "M", "B", "X"], "B", [False, True, False, True]),
    (["0", "1", "1", "0"], None, [False, True, True, False]),
    (["0.0", "1.0", "1.0"], None, [False, True, True]),
    (["true", "false", "true"], None, [True, False, True]),
    (["1", "2", "3", "2"], "2", [True, False, True, False]),
    (["1.0", "2.0", "2.5"], "2", [True, False, True]),
    (["1", "2", "3"], None, None),
    (["a", "b", "a"], None, None),
    (["7", "x7", "7"], "7", [False, True, False]),
]
# fmt: on


@pytest.mark.parametrize(("cells", "normal", "expected"), RULES)
def test_the_service_reads_labels_as_training_does(
    tmp_path: Path, cells: list[str], normal: str | None, expected: list[bool] | None
) -> None:
    """The cells as text (what a CSV body or the page sends) against training.data's reading of the same CSV."""
    path = tmp_path / "rows.csv"
    path.write_text("f,label\n" + "".join(f"{i},{cell}\n" for i, cell in enumerate(cells)))
    dataset = load_dataset(path, "label")
    mask = normal_mask(dataset, normal)
    served = labels.anomalous(cells, normal)
    assert (None if mask is None else (~mask).tolist()) == (None if served is None else served.tolist()) == expected


def test_an_integer_past_floats_range_is_a_label_not_a_crash() -> None:
    huge = 10**400  # JSON may carry it; float() of it raises OverflowError
    flags = labels.anomalous([huge, NORMAL, ANOMALOUS], NORMAL)
    assert flags is not None and flags.tolist() == [True, False, True]
    assert labels.anomalous([huge, 0, 1], None) is None  # not a 0/1 flag


def test_too_few_of_a_class_gives_a_note_not_a_number() -> None:
    x, y = table(rows=60, anomalies=9)
    scores = x.sum(axis=1)
    found = labels.separation(scores, y, LABEL, NORMAL)
    assert (found.normal, found.anomalous, found.auroc) == (51, 9, None)
    assert (
        found.note
        == f"too few anomalies to estimate (9 anomalous and 51 normal rows; it needs {labels.MIN_PER_CLASS} of each)"
    )
    unknown = labels.separation(scores, y, LABEL, None)  # B/M without a normal label: no rule says which is which
    assert unknown.auroc is None and unknown.note is not None and "not 0/1 anomaly flags" in unknown.note


def _v2_body(label: dict[str, Any], blob: bytes = b"") -> tuple[bytes, str]:
    x = {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}
    header = json.dumps({"inputs": [x, label]}).encode()
    return header + blob, str(len(header))


# id, the label input (binary data after the header where it says so), message
# fmt: off
BAD_BYTES: list[tuple[str, dict[str, Any], bytes, str]] = [
    ("a length past the end", {"name": LABEL, "datatype": "BYTES", "shape": [1],
     "parameters": {"binary_data_size": 6}}, struct.pack("<I", 9) + b"ab", "its 6 bytes do not hold 1 BYTES elements"),
    ("bytes left over", {"name": LABEL, "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 7}},
     struct.pack("<I", 1) + b"abc", "its 7 bytes do not hold 1 BYTES elements"),
    ("fewer elements than the shape", {"name": LABEL, "datatype": "BYTES", "shape": [2],
     "parameters": {"binary_data_size": 5}}, struct.pack("<I", 1) + b"a", "its 5 bytes do not hold 2 BYTES elements"),
    ("not UTF-8", {"name": LABEL, "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 5}},
     struct.pack("<I", 1) + b"\xff", "a BYTES element is not UTF-8 text"),
    ("more elements than any label column", {"name": LABEL, "datatype": "BYTES", "shape": [10**9], "data": []}, b"",
     f"a BYTES tensor holds at most {v2_codec.MAX_BYTES_ELEMENTS} elements"),
    ("rows as BYTES", {"name": "z", "datatype": "BYTES", "shape": [1], "data": ["1"]}, b"",
     "BYTES tensors are not taken here"),
]
# fmt: on


@pytest.mark.parametrize(("label", "blob", "message"), [c[1:] for c in BAD_BYTES], ids=[c[0] for c in BAD_BYTES])
def test_malformed_bytes_inputs_are_a_400_that_says_why(label: dict[str, Any], blob: bytes, message: str) -> None:
    body, length = _v2_body(label, blob)
    with pytest.raises(ServiceError) as refused:
        v2_codec.parse_request(body, length)
    assert refused.value.status == 400 and message in refused.value.message


@pytest.mark.anyio
async def test_many_labels_are_read_off_the_event_loop_to_the_same_answer(
    trained: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    models, data = trained
    _, x, y = training_rows(data)
    runtime = serving(models).runtime(MODEL, None)
    scores = x.sum(axis=1)
    on_loop = await dataplane.separation(runtime, scores, y)
    threads: list[str] = []
    monkeypatch.setattr(dataplane, "SEPARATION_ON_LOOP_ROWS", 0)
    monkeypatch.setattr(labels, "known", _noting_thread(labels.known, threads))

    assert await dataplane.separation(runtime, scores, y) == on_loop
    assert threads and threads[0] != threading.main_thread().name
    assert on_loop.auroc == pytest.approx(roc_auc_score(np.array(y) == ANOMALOUS, scores))


def _noting_thread(function: Any, threads: list[str]) -> Any:
    def noted(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return function(*args)

    return noted
