"""Every bad V2 request, as raw HTTP: its status, the protocol's error shape `{"error": "message"}`, and the
service answering the next good request. The V2 twins of tests/service/test_bad_input.py's table."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.anyio

INFER = "/v2/models/tab/infer"
ROW = [3.0, 3.1, 2.9, 3.0, 3.2]


def tensor(name: str = "x", shape: list[int] | None = None, datatype: str = "FP32", **fields: Any) -> dict[str, Any]:
    return {"name": name, "shape": [1, 5] if shape is None else shape, "datatype": datatype, **fields}


def binary(header: dict[str, Any], data: bytes, header_length: int | None = None) -> dict[str, Any]:
    raw = json.dumps(header).encode()
    length = len(raw) if header_length is None else header_length
    return {"content": raw + data, "headers": {"Inference-Header-Content-Length": str(length)}}


def plain(header: Any) -> dict[str, Any]:
    return {"content": json.dumps(header).encode()}


FP32_ROW = np.asarray([ROW], np.float32).tobytes()
GOOD = {"inputs": [tensor(data=ROW)]}

# id, path, request, status, a phrase of the message
# fmt: off
CASES: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("not JSON", INFER, {"content": b"{"}, 400, "not JSON"),
    ("header not an object", INFER, plain([1, 2]), 400, "must be a JSON object"),
    ("unknown field", INFER, plain({**GOOD, "extra": 1}), 400, "unknown fields ['extra']"),
    ("header length past the body", INFER, binary(GOOD, b"", header_length=10_000), 400, "but the body has"),
    ("header length not a number", INFER, {"content": b"{}", "headers": {"Inference-Header-Content-Length": "x"}},
     400, "must be a byte count"),
    ("binary size does not match shape", INFER,
     binary({"inputs": [tensor(parameters={"binary_data_size": 16})]}, FP32_ROW[:16]), 400, "takes 20"),
    ("binary size does not match datatype", INFER,
     binary({"inputs": [tensor(datatype="FP64", parameters={"binary_data_size": 20})]}, FP32_ROW), 400, "takes 40"),
    ("binary data missing", INFER, binary({"inputs": [tensor(parameters={"binary_data_size": 20})]}, b""),
     400, "0 remain"),
    ("binary data left over", INFER, binary({"inputs": [tensor(parameters={"binary_data_size": 20})]}, FP32_ROW * 2),
     400, "that no input claims"),
    ("huge shape", INFER,
     binary({"inputs": [tensor(shape=[2**40, 5], parameters={"binary_data_size": 20})]}, FP32_ROW), 400, "takes"),
    ("row shape mismatch", INFER, plain({"inputs": [tensor(shape=[1, 4], data=ROW[:4])]}), 400, "expected one row"),
    ("data count mismatch", INFER, plain({"inputs": [tensor(shape=[2, 5], data=ROW)]}), 400, "needs 10"),
    ("ragged data", INFER, plain({"inputs": [tensor(data=[[1.0, 2.0], [3.0]])]}), 400, "ragged"),
    ("ragged data of the right total", INFER, plain({"inputs": [tensor(shape=[2, 5], data=[[*ROW, 1.0], ROW[:4]])]}),
     400, "ragged"),
    ("an empty array among the data", INFER, plain({"inputs": [tensor(data=[[], ROW])]}), 400, "ragged"),
    ("strings as data", INFER, plain({"inputs": [tensor(data=["1"] * 5)]}), 400, "numbers only"),
    ("no data", INFER, plain({"inputs": [tensor()]}), 400, "give its values"),
    ("BYTES tensor", INFER, plain({"inputs": [tensor(datatype="BYTES", data=["a"] * 5)]}), 400, "BYTES"),
    ("unknown datatype", INFER, plain({"inputs": [tensor(datatype="FP99", data=ROW)]}), 400, "not one of"),
    ("datatype an object", INFER, plain({"inputs": [tensor(datatype={"a": 1}, data=ROW)]}), 400, "is not one of"),
    ("negative dimension", INFER, plain({"inputs": [tensor(shape=[-1, 5], data=ROW)]}), 400, "non-negative"),
    ("too many dimensions", INFER, plain({"inputs": [tensor(shape=[1] * 100, data=[1.0])]}), 400, "at most 8"),
    ("non-finite", INFER,
     binary({"inputs": [tensor(parameters={"binary_data_size": 20})]}, np.full((1, 5), np.nan, np.float32).tobytes()),
     400, "NaN"),
    ("empty batch", INFER, plain({"inputs": [tensor(shape=[0, 5], data=[])]}), 400, "no rows"),
    ("empty binary batch", INFER, binary({"inputs": [tensor(shape=[0, 5], parameters={"binary_data_size": 0})]}, b""),
     400, "no rows"),
    ("too many rows", INFER, plain({"inputs": [tensor(shape=[2000, 5], data=ROW * 2000)]}), 413, "at most"),
    ("unknown input", INFER, plain({"inputs": [tensor(name="q", data=ROW)]}), 400, "exactly one input"),
    ("both x and z", INFER, plain({"inputs": [tensor(data=ROW), tensor("z", [1, 2], data=[0.0, 0.0])]}),
     400, "exactly one input"),
    ("neither x nor z", INFER, plain({"inputs": []}), 400, "non-empty list"),
    ("input twice", INFER, plain({"inputs": [tensor(data=ROW), tensor(data=ROW)]}), 400, "given twice"),
    ("unknown output", INFER, plain({**GOOD, "outputs": [{"name": "nope"}]}), 400, "cannot be computed"),
    ("logvar of a plain autoencoder", INFER, plain({**GOOD, "outputs": [{"name": "z_logvar"}]}), 400,
     "cannot be computed"),
    ("score from latents", INFER,
     plain({"inputs": [tensor("z", [1, 2], data=[0.0, 0.0])], "outputs": [{"name": "score"}]}),
     400, "cannot be computed from z"),
    ("id not a string", INFER, plain({**GOOD, "id": 7}), 400, "id must be a string"),
    ("binary_data not a bool", INFER, plain({**GOOD, "outputs": [{"name": "score", "parameters": {"binary_data": 1}}]}),
     400, "true or false"),
    ("unknown model", "/v2/models/nope/infer", plain(GOOD), 404, "unknown model"),
    ("unknown version", "/v2/models/tab/versions/9/infer", plain(GOOD), 404, "no version '9'"),
    ("a version of 5,000 digits", "/v2/models/tab/versions/" + "9" * 5000 + "/infer", plain(GOOD), 404, "no version"),
    ("broken model", "/v2/models/zz-broken/infer", plain(GOOD), 503, "unavailable"),
]
# fmt: on


@pytest.mark.parametrize(("path", "request_", "status", "phrase"), [pytest.param(*c[1:], id=c[0]) for c in CASES])
async def test_bad_infer_requests_are_refused_in_the_protocols_shape(
    client: httpx.AsyncClient, path: str, request_: dict[str, Any], status: int, phrase: str
) -> None:
    answer = await client.post(path, **request_)

    assert answer.status_code == status, answer.text
    body = answer.json()
    assert list(body) == ["error"] and isinstance(body["error"], str)
    assert phrase in body["error"]
    good = await client.post(INFER, json=GOOD)
    assert good.status_code == 200 and good.json()["outputs"]


@pytest.mark.parametrize(
    ("path", "status"),
    [("/v2/models/nope", 404), ("/v2/models/tab/versions/9/ready", 404), ("/v2/models/zz-broken/ready", 503)],
)
async def test_metadata_errors_use_the_protocols_shape(client: httpx.AsyncClient, path: str, status: int) -> None:
    answer = await client.get(path)
    assert answer.status_code == status
    assert list(answer.json()) == ["error"]


async def test_the_repository_api_is_off_without_admin_keys(client: httpx.AsyncClient) -> None:
    answer = await client.post("/v2/repository/models/tab/unload")
    assert answer.status_code == 404
    assert answer.json() == {"error": "the repository API is off: set AE_ADMIN_KEYS to turn it on"}
    assert (await client.post(INFER, json=GOOD)).status_code == 200
