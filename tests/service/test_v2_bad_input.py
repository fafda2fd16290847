"""Every bad V2 request, as raw HTTP: its status, the protocol's error shape `{"error": "message"}`, and the
service answering the next good request. The V2 twins of tests/service/test_bad_input.py's table."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

pytestmark = pytest.mark.anyio

INFER = "/v2/models/tab/infer"
ROW = [3.0, 3.1, 2.9, 3.0, 3.2]
MAX_BYTES = 256 * 1024  # small, so the body-limit cases need small bodies


@pytest.fixture(scope="module")
def app(make_app: Any) -> FastAPI:
    return make_app(max_body_bytes=MAX_BYTES)


def tensor(name: str = "x", shape: list[int] | None = None, datatype: str = "FP32", **fields: Any) -> dict[str, Any]:
    return {"name": name, "shape": [1, 5] if shape is None else shape, "datatype": datatype, **fields}


def binary(header: dict[str, Any], data: bytes, header_length: int | None = None) -> dict[str, Any]:
    raw = json.dumps(header).encode()
    length = len(raw) if header_length is None else header_length
    return {"content": raw + data, "headers": {"Inference-Header-Content-Length": str(length)}}


def plain(header: Any) -> dict[str, Any]:
    return {"content": json.dumps(header).encode()}  # NaN and inf are written as JSON's missing NaN, Infinity


def last_value(literal: str) -> dict[str, Any]:
    """The good request with ROW's last value written as `literal`, which json.dumps cannot write (1e400)."""
    return {"content": json.dumps(GOOD).replace(str(ROW[-1]), literal).encode()}


def twice(first: Any, second: Any) -> dict[str, Any]:
    """A header giving inputs twice: the parsers keep the last one, as the REST routes do."""
    return {"content": f'{{"inputs": {json.dumps(first)}, "inputs": {json.dumps(second)}}}'.encode()}


async def chunks(total: int) -> AsyncIterator[bytes]:
    """A body without Content-Length (chunked), so only counting can catch it."""
    for _ in range(total // 1024):
        yield b" " * 1024


FP32_ROW = np.asarray([ROW], np.float32).tobytes()
GOOD = {"inputs": [tensor(data=ROW)]}

# id, path, request, status, a phrase of the message
# fmt: off
CASES: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("not JSON", INFER, {"content": b"{"}, 400, "not JSON"),
    ("header not an object", INFER, plain([1, 2]), 400, "must be a JSON object"),
    ("too many fields", INFER, plain({**GOOD, **{f"extra{i}": i for i in range(16)}}), 400, "at most 16"),
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
     binary({"inputs": [tensor(shape=[2**40, 5], parameters={"binary_data_size": 20})]}, FP32_ROW), 400, "axis over"),
    ("row shape mismatch", INFER, plain({"inputs": [tensor(shape=[1, 4], data=ROW[:4])]}), 400, "expected one row"),
    ("data count mismatch", INFER, plain({"inputs": [tensor(shape=[2, 5], data=ROW)]}), 400, "needs 10"),
    ("ragged data", INFER, plain({"inputs": [tensor(data=[[1.0, 2.0], [3.0]])]}), 400, "ragged"),
    ("ragged data of the right total", INFER, plain({"inputs": [tensor(shape=[2, 5], data=[[*ROW, 1.0], ROW[:4]])]}),
     400, "ragged"),
    ("an empty array among the data", INFER, plain({"inputs": [tensor(data=[[], ROW])]}), 400, "ragged"),
    ("strings as data", INFER, plain({"inputs": [tensor(data=["1"] * 5)]}), 400, "numbers only"),
    ("nulls as data", INFER, plain({"inputs": [tensor(data=[*ROW[:4], None])]}), 400, "numbers only"),
    ("booleans as data", INFER, plain({"inputs": [tensor(data=[True] * 5)]}), 400, "numbers only"),
    ("a boolean among numbers", INFER, plain({"inputs": [tensor(data=[[*ROW[:4], True]])]}), 400, "found booleans"),
    # V2 has BOOL tensors, but x is FP32: booleans are refused, not read as 0 and 1.
    ("BOOL tensor", INFER, plain({"inputs": [tensor(datatype="BOOL", data=[True] * 5)]}), 400, "is not one of"),
    ("NaN literal", INFER, plain({"inputs": [tensor(data=[*ROW[:4], math.nan])]}), 400, "not JSON"),
    ("Infinity literal", INFER, plain({"inputs": [tensor(data=[*ROW[:4], -math.inf])]}), 400, "not JSON"),
    ("beyond double", INFER, last_value("1e400"), 400, "not JSON"),
    ("beyond float32", INFER, plain({"inputs": [tensor(data=[*ROW[:4], 1e39])]}), 400, "NaN or infinite"),
    ("beyond float16", INFER, plain({"inputs": [tensor(datatype="FP16", data=[*ROW[:4], 7e4])]}), 400,
     "NaN or infinite"),
    ("beyond UINT8", INFER, plain({"inputs": [tensor(datatype="UINT8", data=[1, 2, 3, 4, 300])]}), 400,
     "UINT8 data must be whole numbers from 0 to 255"),
    ("negative UINT8", INFER, plain({"inputs": [tensor(datatype="UINT8", data=[1, 2, 3, 4, -1])]}), 400,
     "from 0 to 255"),
    ("beyond INT32", INFER, plain({"inputs": [tensor(datatype="INT32", data=[1, 2, 3, 4, 10**30])]}), 400,
     "INT32 data must be whole numbers"),
    ("beyond UINT64 by one", INFER, plain({"inputs": [tensor(datatype="UINT64", data=[1, 2, 3, 4, 2.0**64])]}),
     400, "UINT64 data must be whole numbers"),
    ("a fraction as INT32", INFER, plain({"inputs": [tensor(datatype="INT32", data=[1.5, 2, 3, 4, 5])]}), 400,
     "whole numbers"),
    ("values that overflow the score", INFER, plain({"inputs": [tensor(shape=[2, 5], data=[*ROW, *[1e30] * 5])]}),
     400, "the scores of rows [1] overflow float32"),
    ("inputs twice, the last one bad", INFER,
     twice([tensor(data=ROW)], [tensor(shape=[1, 2], data=[1.0, 2.0])]), 400, "has shape [1, 2]"),
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
    ("too many rows", INFER, plain({"inputs": [tensor(shape=[2000, 5], data=ROW * 2000)]}), 413, "at most 1024"),
    ("too many rows, over 64 KB: counted as they arrive", INFER,
     plain({"inputs": [tensor(shape=[8000, 5], data=ROW * 8000)]}), 413,
     "more values or arrays than the largest valid request"),
    ("too many rows, binary", INFER,
     binary({"inputs": [tensor(shape=[2000, 5], parameters={"binary_data_size": 40000})]}, FP32_ROW * 2000), 413,
     "at most"),
    ("body over the limit", INFER, {"content": b" " * (MAX_BYTES + 1)}, 413, f"exceeds {MAX_BYTES} bytes"),
    ("chunked body over the limit", INFER, {"content": chunks(MAX_BYTES + 4096)}, 413, f"exceeds {MAX_BYTES} bytes"),
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
    ("a zero-size shape with an axis of 2^63", INFER, plain({"inputs": [tensor(shape=[0, 2**63], data=[])]}), 400,
     "has an axis over 4294967296"),
    ("its binary twin", INFER,
     binary({"inputs": [tensor(shape=[0, 2**63], parameters={"binary_data_size": 0})]}, b""), 400, "has an axis over"),
    ("header length in non-ASCII digits", INFER,
     {"content": b"{}", "headers": {"Inference-Header-Content-Length": b"\xb2"}}, 400, "must be a byte count"),
    ("latents that overflow the decoder", INFER,
     plain({"inputs": [tensor("z", [4, 2], data=[a * 3.4e38 for a in (1, 1, 1, -1, -1, 1, -1, -1)])]}), 400,
     "the reconstructions of rows"),
    ("nine inputs", INFER, plain({"inputs": [tensor(data=ROW)] * 9}), 400, "9 inputs; a request has at most 8"),
    ("forty outputs", INFER, plain({**GOOD, "outputs": [{"name": "score"}] * 40}), 400, "at most 32"),
    ("a list as a parameter", INFER, plain({**GOOD, "parameters": {"pad": [0] * 10}}), 400,
     "must be booleans, numbers or strings"),
    ("an object as an input's parameter", INFER, plain({"inputs": [tensor(data=ROW, parameters={"a": {}})]}), 400,
     "must be booleans, numbers or strings"),
    ("JSON nested 40 deep, over 64 KB", INFER, {"content": b'{"id": ' + b"[" * 40 + b"]" * 40 + b"}" + b" " * 70_000},
     400, "deeper than 16"),
    ("a JSON header holding more values than any request", INFER,
     plain({"inputs": [tensor(data=ROW)], "id": "x", "outputs": [{"name": "score"}] * 7000}), 413,
     "more values or arrays than the largest valid request"),
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


async def test_fields_the_protocol_does_not_name_are_ignored(client: httpx.AsyncClient) -> None:
    """KServe's client sends model_name; Triton and MLServer ignore such fields, and so does the service."""
    answers = [await client.post(INFER, json=header) for header in (GOOD, {**GOOD, "model_name": "tab", "x": [1]})]
    assert [answer.status_code for answer in answers] == [200, 200]
    assert answers[0].json()["outputs"] == answers[1].json()["outputs"]


async def test_uint64_extremes_are_read_exactly(client: httpx.AsyncClient) -> None:
    # 2^64 - 1 is a valid UINT64; read as a float64 it would round to 2^64 and be refused as out of range.
    data = [0, 1, 2, 3, 2**64 - 1]
    answer = await client.post(
        INFER, json={"inputs": [tensor(datatype="UINT64", data=data)], "outputs": [{"name": "z"}]}
    )
    as_floats = await client.post(
        INFER, json={"inputs": [tensor(data=[float(v) for v in data])], "outputs": [{"name": "z"}]}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"] == as_floats.json()["outputs"]


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
