"""Everything a client can get wrong, with the exact status and body it gets back; the app keeps serving."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image

pytestmark = pytest.mark.anyio

# Small limits, so the limit cases need small payloads.
LIMITS = {
    "max_batch_rows": 64,
    "max_body_bytes": 256 * 1024,
    "max_image_pixels": 512 * 512,
    "max_request_pixels": 2 * 512 * 512,
}

TAB = "/score?model=tab"
ROW = [1.0, 2.0, 3.0, 4.0, 5.0]
TAB_SHAPES = "expected one row of shape [5] or a batch of shape [n, 5]"
JSON_OR_BINARY = "send ['application/json', 'application/octet-stream', 'application/x-npy'"
JSON_OR_UPLOAD = f"{JSON_OR_BINARY}, 'multipart/form-data', 'text/csv']"
MAX_ROWS, MAX_BYTES = LIMITS["max_batch_rows"], LIMITS["max_body_bytes"]


@pytest.fixture(scope="module")
def app(make_app: Any) -> FastAPI:
    return make_app(**LIMITS)


NPY = {"content-type": "application/x-npy"}
RAW = "application/octet-stream"


def raw(shape: str) -> dict[str, str]:
    return {"content-type": RAW, "x-shape": shape}


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def npy_claiming(rows: int, version: int = 1, width: int = 5) -> bytes:
    """A .npy file (format `version`.0) whose header promises `rows` rows of `width` float32, followed by
    ten float32."""
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {width}), }}".encode()
    header = header.ljust(118) + b"\n"
    size = len(header).to_bytes(2 if version == 1 else 4, "little")
    return b"\x93NUMPY" + bytes([version, 0]) + size + header + np.zeros(10, np.float32).tobytes()


# Latents at float32's edge, in every sign: whatever the weights, some overflow the decoder.
HUGE_LATENTS = [[a * 3.4e38, b * 3.4e38] for a in (1, -1) for b in (1, -1)]


def npy_with(descr: str, shape: str, data_bytes: int) -> bytes:
    """A .npy file of this dtype description and shape (as numpy writes them), and this many zero bytes."""
    header = f"{{'descr': {descr}, 'fortran_order': False, 'shape': {shape}, }}".encode().ljust(118) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * data_bytes


def png(size: tuple[int, int] = (8, 8), mode: str = "L", fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format=fmt)
    return buffer.getvalue()


async def chunks(total: int) -> AsyncIterator[bytes]:
    """A body without Content-Length (chunked), so only counting can catch it: whitespace, which no limit on
    the values a JSON body holds can refuse."""
    yield b'{"inputs": ['
    for _ in range(total // 1024):
        yield b" " * 1024
    yield b"1]}"


# id, method, path, request keyword arguments, status, code, message (a trailing "..." matches a prefix)
# fmt: off
CASES: list[tuple[str, str, str, dict[str, Any], int, str, str]] = [
    ("malformed JSON", "POST", TAB, {"content": b'{"inputs": [1,'}, 400, "malformed_json",
     "the body is not valid JSON: ..."),
    ("JSON not an object", "POST", TAB, {"json": [ROW]}, 422, "invalid_request",
     'the body must be a JSON object, e.g. {"inputs": [...]}'),
    ("missing inputs", "POST", TAB, {"json": {"rows": [ROW]}}, 422, "invalid_request",
     "missing field(s) ['inputs']; the fields are ['inputs', 'return_sq_err', 'top_features']"),
    ("unknown field", "POST", TAB, {"json": {"inputs": [ROW], "return_sqerr": True}}, 422, "invalid_request",
     "unknown field(s) ['return_sqerr']; the fields are ['inputs', 'return_sq_err', 'top_features']"),
    ("option of the wrong type", "POST", TAB, {"json": {"inputs": [ROW], "return_sq_err": "yes"}}, 422,
     "invalid_request", "return_sq_err must be true or false, got 'yes'"),
    ("wrong row length", "POST", TAB, {"json": {"inputs": [[1, 2, 3]]}}, 422, "invalid_shape",
     f"inputs has shape [1, 3]; {TAB_SHAPES}"),
    ("one number", "POST", TAB, {"json": {"inputs": 3.0}}, 422, "invalid_shape",
     f"inputs has shape []; {TAB_SHAPES}"),
    ("too many axes", "POST", TAB, {"json": {"inputs": [[ROW]]}}, 422, "invalid_shape",
     f"inputs has shape [1, 1, 5]; {TAB_SHAPES}"),
    ("ragged rows", "POST", TAB, {"json": {"inputs": [ROW, [1.0]]}}, 422, "invalid_shape",
     f"inputs: rows are ragged; {TAB_SHAPES}"),
    ("strings", "POST", TAB, {"json": {"inputs": [[1, 2, 3, 4, "5"]]}}, 422, "invalid_dtype",
     "inputs must hold numbers only, found strings"),
    ("nulls", "POST", TAB, {"json": {"inputs": [[1, 2, 3, 4, None]]}}, 422, "invalid_dtype",
     "inputs must hold numbers only, found nulls, objects or mixed values"),
    ("booleans", "POST", TAB, {"json": {"inputs": [[True] * 5]}}, 422, "invalid_dtype",
     "inputs must hold numbers only, found booleans"),
    ("a boolean among numbers", "POST", TAB, {"json": {"inputs": [[1, 2, 3, 4, True]]}}, 422, "invalid_dtype",
     "inputs must hold numbers only, found booleans"),
    ("NaN", "POST", TAB, {"content": b'{"inputs": [[1, 2, 3, 4, NaN]]}'}, 422, "non_finite",
     "inputs holds NaN or infinite values (rows [0])"),
    ("Infinity", "POST", TAB, {"content": b'{"inputs": [[1, 2, 3, 4, 5], [1, 2, 3, 4, -Infinity]]}'}, 422,
     "non_finite", "inputs holds NaN or infinite values (rows [1])"),
    ("beyond double", "POST", TAB, {"content": b'{"inputs": [1, 2, 3, 4, 1e400]}'}, 422, "non_finite",
     "inputs holds NaN or infinite values (rows [0])"),
    ("beyond float32", "POST", TAB, {"json": {"inputs": [1, 2, 3, 4, 1e39]}}, 422, "non_finite",
     "inputs holds NaN or infinite values (rows [0])"),
    ("empty batch", "POST", TAB, {"json": {"inputs": []}}, 422, "empty_batch",
     "inputs is empty: send at least one row"),
    # What a parser that flattens nested arrays (service.fastjson) could miss: each must stay refused.
    ("ragged rows of equal total size", "POST", TAB, {"json": {"inputs": [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10]]}}, 422,
     "invalid_shape", f"inputs: rows are ragged; {TAB_SHAPES}"),
    ("a value nested one level deeper", "POST", TAB, {"json": {"inputs": [[1, 2, 3, 4, [5]], ROW]}}, 422,
     "invalid_shape", f"inputs: rows are ragged; {TAB_SHAPES}"),
    ("an empty array beside a full one", "POST", TAB, {"json": {"inputs": [[[], ROW]]}}, 422, "invalid_shape",
     f"inputs: rows are ragged; {TAB_SHAPES}"),
    ("a row and loose numbers", "POST", TAB, {"json": {"inputs": [ROW, 1, 2, 3, 4, 5]}}, 422, "invalid_shape",
     f"inputs: rows are ragged; {TAB_SHAPES}"),
    ("numbers as strings", "POST", TAB, {"json": {"inputs": [["1", 2, 3, 4, 5]]}}, 422, "invalid_dtype",
     "inputs must hold numbers only, found strings"),
    ("duplicate rows field", "POST", TAB, {"content": b'{"inputs": [[1,2,3,4,5]], "inputs": [[1,2]]}',
     "headers": {"content-type": "application/json"}}, 422, "invalid_shape",
     "inputs has shape [1, 2]; expected one row of shape [5] or a batch of shape [n, 5]"),
    ("values that overflow the score", "POST", TAB, {"json": {"inputs": [ROW, [1e30] * 5]}}, 422, "non_finite_result",
     "the scores of rows [1] overflow float32: their values are too far out of range"),
    ("an .npy header claiming 2^40 rows", "POST", TAB, {"content": npy_claiming(2**40), "headers": NPY}, 400,
     "malformed_npy", "the body is not a readable .npy file: its header says shape [1099511627776, 5] "
     "(21990232555520 bytes) but 40 bytes follow"),
    ("a format 3.0 .npy header claiming 2^40 rows", "POST", TAB, {"content": npy_claiming(2**40, 3), "headers": NPY},
     400, "malformed_npy", "the body is not a readable .npy file: its header says shape [1099511627776, 5] "
     "(21990232555520 bytes) but 40 bytes follow"),
    ("an .npy of format 4.0", "POST", TAB, {"content": npy_claiming(2, 4), "headers": NPY}, 400, "malformed_npy",
     "the body is not a readable .npy file: format version 4.0 is not one of [(1, 0), (2, 0), (3, 0)]"),
    ("an .npy of no rows and an axis of 2^63", "POST", TAB,
     {"content": npy_claiming(0, 1, 2**63)[:-40], "headers": NPY}, 400, "malformed_npy",
     f"the array must have at most 8 dimensions of at most 4294967296 each, got [0, {2**63}]"),
    ("X-Shape of no rows and an axis of 2^63", "POST", TAB, {"content": b"", "headers": raw(f"0,{2**63}")}, 400,
     "invalid_shape_header", f"X-Shape must have at most 8 dimensions of at most 4294967296 each, got [0, {2**63}]"),
    ("X-Shape of 4,400 digits", "POST", TAB, {"content": b"", "headers": raw("9" * 4400 + ",5")}, 400,
     "invalid_shape_header", f"X-Shape must be at most 8 comma-separated integers, got {('9' * 80)!r}"),
    ("an .npy of a subarray dtype", "POST", TAB, {"content": npy_with("('<f4', (5,))", "(2,)", 40), "headers": NPY},
     400, "malformed_npy", "the body is not a readable .npy file: its dtype '|V20' is not a plain number type"),
    ("an .npy of a zero-size dtype", "POST", TAB, {"content": npy_with("'|V0'", "(2, 5)", 0), "headers": NPY},
     400, "malformed_npy", "the body is not a readable .npy file: its dtype '|V0' is not a plain number type"),
    ("an .npy shape of negative numbers", "POST", TAB, {"content": npy_with("'<f4'", "(-2, -5)", 40), "headers": NPY},
     400, "malformed_npy", "the body is not a readable .npy file: its shape [-2, -5] is not of non-negative integers"),
    ("an .npy shape of booleans", "POST", TAB, {"content": npy_with("'<f4'", "(True, 5)", 20), "headers": NPY},
     400, "malformed_npy", "the body is not a readable .npy file: its shape [True, 5] is not of non-negative integers"),
    ("an option given twice in the query", "POST", TAB + "&top_features=2&top_features=3", {"json": {"inputs": [ROW]}},
     400, "invalid_request", "option(s) ['top_features'] are given more than once in the query"),
    ("an option as a long list", "POST", TAB, {"json": {"inputs": [ROW], "top_features": [0] * 300}}, 422,
     "invalid_request", "top_features must be an integer, got a list"),
    ("an option as a long string", "POST", TAB, {"json": {"inputs": [ROW], "return_sq_err": "x" * 10_000}}, 422,
     "invalid_request", f"return_sq_err must be true or false, got {repr('x' * 10_000)[:60]}..."),
    ("X-Shape in non-ASCII digits", "POST", TAB, {"content": b"", "headers": {**raw(""), "x-shape": b"\xb2,5"}},
     400, "invalid_shape_header", "X-Shape must be at most 8 comma-separated integers, got '\xb2,5'"),
    ("X-Shape over the row limit, refused unread", "POST", TAB, {"content": b"", "headers": raw("5000,5")}, 413,
     "too_many_rows", f"inputs has 5000 rows; at most {MAX_ROWS} per request"),
    ("latents that overflow the decoder", "POST", "/decode?model=tab",
     {"json": {"latents": [[0.0, 0.0], *HUGE_LATENTS]}}, 422, "non_finite_result", "the reconstructions of rows ..."),
    ("empty .npy batch", "POST", TAB, {"content": npy(np.zeros((0, 5), np.float32)), "headers": NPY}, 422,
     "empty_batch", "inputs has no rows: send at least one"),
    ("empty raw batch", "POST", TAB, {"content": b"", "headers": raw("0,5")}, 422, "empty_batch",
     "inputs has no rows: send at least one"),
    ("X-Shape of 100 dimensions", "POST", TAB, {"content": b"\0" * 4, "headers": raw(",".join(["1"] * 100))}, 400,
     "invalid_shape_header", f"X-Shape must be at most 8 comma-separated integers, got {','.join(['1'] * 100)[:80]!r}"),
    ("a version of 5,000 digits", "POST", "/models/tab/versions/" + "9" * 5000 + "/score", {"json": {"inputs": [ROW]}},
     404, "version_not_found", f"model 'tab' has no version {'9' * 40!r}; versions: [1, 2]"),
    ("too many rows", "POST", TAB, {"json": {"inputs": [ROW] * (MAX_ROWS + 1)}}, 413, "too_many_rows",
     f"inputs has {MAX_ROWS + 1} rows; at most {MAX_ROWS} per request"),
    ("body over the limit", "POST", TAB, {"content": b" " * (MAX_BYTES + 1)}, 413, "body_too_large",
     f"the request body exceeds {MAX_BYTES} bytes"),
    ("chunked body over the limit", "POST", TAB, {"content": chunks(MAX_BYTES + 4096)}, 413, "body_too_large",
     f"the request body exceeds {MAX_BYTES} bytes"),
    ("text/plain", "POST", TAB, {"content": b"1,2,3", "headers": {"content-type": "text/plain"}}, 415,
     "unsupported_media_type", f"text/plain is not accepted here; {JSON_OR_UPLOAD}"),
    ("form-urlencoded (curl -d)", "POST", TAB, {"data": {"inputs": "1"}}, 415, "unsupported_media_type",
     f"application/x-www-form-urlencoded is not accepted here; {JSON_OR_UPLOAD}"),
    ("upload to a tabular model", "POST", TAB, {"files": {"file": ("a.png", png(), "image/png")}}, 415,
     "unsupported_media_type", "multipart/form-data uploads are for image models only"),
    ("upload to /decode", "POST", "/decode?model=conv", {"files": {"file": ("a.png", png(), "image/png")}}, 415,
     "unsupported_media_type", f"multipart/form-data is not accepted here; {JSON_OR_BINARY}, 'text/csv']"),
    ("upload that is no image", "POST", "/score?model=conv", {"files": {"file": ("a.png", b"GIF89", "image/png")}},
     422, "invalid_image", "the file is not a readable PNG, JPEG or BMP image"),
    ("GIF upload", "POST", "/score?model=conv", {"files": {"file": ("a.gif", png(fmt="GIF"), "image/gif")}}, 415,
     "unsupported_media_type", "GIF images are not accepted; send PNG, JPEG or BMP"),
    ("huge image", "POST", "/score?model=conv", {"files": {"file": ("a.png", png((600, 600)), "image/png")}}, 413,
     "image_too_large", f"the image has more than {LIMITS['max_image_pixels']} pixels"),
    ("images over the per-request pixel budget", "POST", "/score?model=conv",
     {"files": [("file", ("a.png", png((500, 500)), "image/png"))] * 3}, 413, "image_too_large",
     "the images hold 750000 pixels in all; at most 524288 per request"),
    ("an Accept header of 2,000 characters", "POST", TAB,
     {"json": {"inputs": [ROW]}, "headers": {"accept": "application/json;q=0.9," * 80}}, 400, "invalid_request",
     "the Accept header is longer than 1024 characters"),
    ("upload in the wrong field", "POST", "/score?model=conv", {"files": {"image": ("a.png", png(), "image/png")}},
     422, "invalid_request", 'send the image in the multipart field "file"'),
    ("unknown model", "POST", "/score?model=nope", {"json": {"inputs": [ROW]}}, 404, "model_not_found",
     "unknown model 'nope'; served: ['conv', 'tab', 'vae', 'zz-broken']"),
    ("unknown model by path", "POST", "/models/nope/score", {"json": {"inputs": [ROW]}}, 404, "model_not_found",
     "unknown model 'nope'; served: ['conv', 'tab', 'vae', 'zz-broken']"),
    ("unknown version", "POST", "/models/tab/versions/9/score", {"json": {"inputs": [ROW]}}, 404,
     "version_not_found", "model 'tab' has no version '9'; versions: [1, 2]"),
    ("version not a number", "POST", "/score?model=tab&version=latest", {"json": {"inputs": [ROW]}}, 404,
     "version_not_found", "model 'tab' has no version 'latest'; versions: [1, 2]"),
    ("unknown model listed", "GET", "/models/nope", {}, 404, "model_not_found",
     "unknown model 'nope'; served: ['conv', 'tab', 'vae', 'zz-broken']"),
    ("unavailable model", "POST", "/models/zz-broken/score", {"json": {"inputs": [ROW]}}, 503, "model_unavailable",
     "model zz-broken/1 is unavailable: scorer.onnx: sha256 does not match the manifest"),
    ("logvar of a plain autoencoder", "POST", "/encode?model=tab", {"json": {"inputs": [ROW], "return_logvar": True}},
     422, "invalid_request", "tab is not a VAE: it has no log-variance"),
    ("latent of the wrong size", "POST", "/decode?model=tab", {"json": {"latents": [[0.0, 0.0, 0.0]]}}, 422,
     "invalid_shape", "latents has shape [1, 3]; expected one row of shape [2] or a batch of shape [n, 2]"),
    ("generate zero", "POST", "/generate?model=tab", {"json": {"n": 0}}, 422, "invalid_request",
     "n must be a positive integer, got 0"),
    ("generate text", "POST", "/generate?model=tab", {"json": {"n": "3"}}, 422, "invalid_request",
     "n must be a positive integer, got '3'"),
    ("generate too many", "POST", "/generate?model=tab", {"json": {"n": MAX_ROWS + 1}}, 413, "too_many_rows",
     f"n is {MAX_ROWS + 1}; at most {MAX_ROWS} per request"),
    ("negative seed", "POST", "/generate?model=tab", {"json": {"n": 1, "seed": -1}}, 422, "invalid_request",
     "seed must be a non-negative integer, got -1"),
    ("fractional seed", "POST", "/generate?model=tab", {"json": {"n": 1, "seed": 1.5}}, 422, "invalid_request",
     "seed must be an integer, got 1.5"),
    ("PNG of a tabular model", "POST", "/reconstruct?model=tab", {"json": {"inputs": [ROW]},
     "headers": {"accept": "image/png"}}, 406, "not_acceptable",
     "this answer is available as ['application/json', 'application/x-npy', 'application/octet-stream', "
     "'application/x-npz'] only"),
    ("unknown route", "GET", "/predict", {}, 404, "not_found", "Not Found"),
    ("wrong method", "GET", "/score", {}, 405, "method_not_allowed", "Method Not Allowed"),
    ("npy: not an .npy file", "POST", TAB, {"content": b"garbage", "headers": NPY}, 400, "malformed_npy",
     "the body is not a readable .npy file: ..."),
    ("npy: truncated", "POST", TAB, {"content": npy(np.ones((2, 5), np.float32))[:-4], "headers": NPY}, 400,
     "malformed_npy", "the body is not a readable .npy file: ..."),
    ("npy: strings", "POST", TAB, {"content": npy(np.array([["a"] * 5])), "headers": NPY}, 422, "invalid_dtype",
     "inputs must hold numbers only, found strings"),
    ("npy: objects refused unpickled", "POST", TAB, {"content": npy(np.array([None] * 5)), "headers": NPY}, 400,
     "malformed_npy", "the body is not a readable .npy file: ..."),
    ("npy: wrong row length", "POST", TAB, {"content": npy(np.ones((2, 4), np.float32)), "headers": NPY}, 422,
     "invalid_shape", f"inputs has shape [2, 4]; {TAB_SHAPES}"),
    ("npy: unknown option", "POST", TAB + "&sq=true", {"content": npy(np.ones((1, 5))), "headers": NPY}, 422,
     "invalid_request", "unknown field(s) ['sq']; the fields are ['return_sq_err', 'top_features']"),
    ("raw: wrong length for the shape", "POST", TAB, {"content": b"\0" * 36, "headers": raw("2,5")}, 422,
     "invalid_length", "the body has 36 bytes; X-Shape [2, 5] of float32 needs 40"),
    ("raw: no shape header", "POST", TAB, {"content": b"\0" * 20, "headers": {"content-type": RAW}}, 400,
     "missing_shape", "application/octet-stream bodies need an X-Shape header, e.g. X-Shape: 64,784"),
    ("raw: bad shape header", "POST", TAB, {"content": b"\0" * 20, "headers": raw("1;5")}, 400,
     "invalid_shape_header", "X-Shape must be at most 8 comma-separated integers, got '1;5'"),
    ("raw: negative shape", "POST", TAB, {"content": b"", "headers": raw("-1,5")}, 400,
     "invalid_shape_header", "X-Shape must be at most 8 comma-separated integers, got '-1,5'"),
    ("raw: unknown dtype", "POST", TAB, {"content": b"\0" * 20, "headers": raw("1,5") | {"x-dtype": "complex64"}},
     415, "invalid_dtype", "X-Dtype 'complex64' is not one of ['float16', 'float32', 'float64', 'int32', ..."),
    ("raw: NaN", "POST", TAB, {"content": np.full(5, np.nan, "<f4").tobytes(), "headers": raw("1,5")}, 422,
     "non_finite", "inputs holds NaN or infinite values (rows [0])"),
    ("raw: too many rows", "POST", TAB, {"content": bytes(4 * 5 * 65), "headers": raw("65,5")}, 413,
     "too_many_rows", "inputs has 65 rows; at most 64 per request"),
]
# fmt: on


@pytest.mark.parametrize(
    ("method", "path", "request_kwargs", "status", "code", "message"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
async def test_bad_input(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    request_kwargs: dict[str, Any],
    status: int,
    code: str,
    message: str,
) -> None:
    response = await client.request(method, path, **request_kwargs)

    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    if message.endswith("..."):
        assert body["error"]["message"].startswith(message[:-3])
        body["error"]["message"] = message
    assert body == {"error": {"code": code, "message": message}}
    # Whatever came before, the next request is served.
    assert (await client.post(TAB, json={"inputs": ROW})).status_code == 200
