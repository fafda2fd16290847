"""HTTP requests to numpy rows plus options, and results back to HTTP responses, by media type.

Each Content-Type has a reader and each Accept type a writer, in tables. Binary requests
(application/x-npy, or application/octet-stream with an X-Shape header) take their options from the query
string (`?return_sq_err=true`). Binary answers: application/x-npy and application/octet-stream carry the
route's main array alone (scores, latents, reconstructions or samples) with X-Shape, X-Dtype, X-Model,
X-Version and, from /score, X-Threshold headers; application/x-npz carries every array of the JSON answer."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import orjson
from anyio import to_thread
from fastapi import Request, Response
from starlette.datastructures import UploadFile

from service import bodies, codecs, images, tracing
from service.errors import ServiceError

# An option a route takes besides its rows: name -> (type, default).
Options = Mapping[str, tuple[type, Any]]


@dataclass(frozen=True)
class Pixels:
    """How an image model's rows relate to pixels (rows = (pixels - offset) / scale): for uploads and PNG
    answers."""

    offset: np.ndarray
    scale: np.ndarray


@dataclass(frozen=True)
class RowsRequest:
    """What a route reads: the JSON field holding the rows, their shape, the options, whether images may come."""

    key: str
    row_shape: tuple[int, ...]
    max_rows: int
    options: Options = field(default_factory=dict)
    uploads: bool = False
    max_image_pixels: int = 0
    max_request_pixels: int = 0
    feature_names: tuple[str, ...] | None = None  # rows may then come as {name: value} objects, and CSV headed
    pixels: Pixels | None = None  # an image model's: uploads are read with it
    label_column: str | None = None  # named rows and headed CSV may carry it: it is set apart, never scored


@dataclass(frozen=True)
class Rows:
    """What a route gets from a request: the rows, its options, and the label column's values when the rows
    carried it (one per row, None where a row's is missing)."""

    x: np.ndarray
    options: dict[str, Any]
    labels: list[Any] | None = None


@dataclass
class Result:
    """A route's answer: the JSON body, and for image models the rows a PNG answer would show."""

    body: dict[str, Any]
    main: str
    images: np.ndarray | None = None
    pixels: Pixels | None = None


async def read_rows(request: Request, spec: RowsRequest) -> Rows:
    media = codecs.media_type(request.headers.get("content-type"))
    readers = _READERS if spec.uploads else {k: v for k, v in _READERS.items() if k != codecs.MULTIPART}
    reader = readers.get(media)
    if reader is None:
        raise ServiceError(415, "unsupported_media_type", f"{media} is not accepted here; send {sorted(readers)}")
    with tracing.span("parse", media_type=media):
        return await reader(request, spec)


async def read_json(request: Request, required: list[str], options: Options) -> dict[str, Any]:
    """A JSON body with these fields, options type-checked and defaulted (for routes without rows)."""
    media = codecs.media_type(request.headers.get("content-type"))
    if media != codecs.JSON:
        raise ServiceError(415, "unsupported_media_type", f"{media} is not accepted here; send {codecs.JSON}")
    with tracing.span("parse", media_type=media):
        body = codecs.load_json(await bodies.read(request.stream(), json_scan(request, bodies.SMALL_JSON)))
    codecs.check_fields(body, required, list(options))
    values = {name: body[name] for name in required}
    return values | {name: codecs.option(body, name, kind, default) for name, (kind, default) in options.items()}


async def _json_rows(request: Request, spec: RowsRequest) -> Rows:
    labels = int(spec.label_column is not None)
    scan = json_scan(request, bodies.JsonLimits.for_rows(spec.row_shape, spec.max_rows, extra_per_row=labels))
    raw, query = await bodies.read(request.stream(), scan), _query(request)
    fast = codecs.load_json_with_rows(raw, spec.key, spec.options, fast_only=True)
    if fast is not None:  # simdjson straight into numpy: bounded by the limits, and fastest on the loop
        return _rows_of(fast, spec, query)
    slow = partial(_rows_from_json, raw, spec, query)
    return await off_the_loop(slow) if len(raw) > OFF_LOOP_BYTES else slow()


# A JSON body larger than this that leaves the fast path is parsed in a thread: the event loop gets its
# turns between the parser's calls (no one of which holds the GIL long: service.codecs.as_array), where it
# would wait for all of them. The fast path stays on the loop: a thread costs it more than it takes.
OFF_LOOP_BYTES = 256 * 1024
# A body declared this small is parsed whole for less than counting its structure as it arrives costs.
SCAN_FROM_BYTES = 64 * 1024


def json_scan(request: Request, limits: bodies.JsonLimits) -> bodies.Feed | None:
    """What checks a JSON body against `limits` as it arrives; None for one declared small."""
    declared = declared_length(request)
    return None if declared is not None and declared <= SCAN_FROM_BYTES else bodies.JsonScan(limits)


async def off_the_loop(work: Callable[[], Any]) -> Any:
    return await to_thread.run_sync(work)


def _rows_from_json(raw: bytes, spec: RowsRequest, query: list[tuple[str, str]]) -> Rows:
    body = codecs.load_json_with_rows(raw, spec.key, spec.options)
    assert body is not None
    return _rows_of(body, spec, query)


def _rows_of(body: dict[str, Any], spec: RowsRequest, query: list[tuple[str, str]]) -> Rows:
    # Options first, as the fast path refuses a list among them before it converts the rows.
    options = _options_of(query, spec, {name: value for name, value in body.items() if name != spec.key})
    value, labels = codecs.split_labels(body[spec.key], spec.label_column, spec.key)
    x = codecs.as_batch(value, spec.row_shape, spec.key, spec.max_rows, spec.feature_names)
    return Rows(x, options, labels)


async def _upload_rows(request: Request, spec: RowsRequest) -> Rows:
    if spec.pixels is None:
        raise ServiceError(415, "unsupported_media_type", f"{codecs.MULTIPART} uploads are for image models only")
    # Room for a few unknown fields, so check_fields names them instead of the parser refusing the form.
    form = await request.form(max_files=spec.max_rows, max_fields=len(spec.options) + 8)
    files = [item for item in form.getlist("file") if isinstance(item, UploadFile)]
    if not files:
        raise ServiceError(422, "invalid_request", 'send the image in the multipart field "file"')
    blobs = [await f.read() for f in files]
    total = images.check_total_pixels(blobs, spec.max_request_pixels)
    # Decoding and resizing run in a worker thread (PIL releases the GIL), so the event loop keeps answering.
    decode = partial(images.decode_image, row_shape=spec.row_shape, max_pixels=spec.max_image_pixels)
    budget: images.PixelBudget = request.app.state.pixel_budget
    with budget.hold(total):
        pixels = np.stack([await to_thread.run_sync(decode, blob) for blob in blobs])
    rows = codecs.checked_rows(images.from_pixels(pixels, spec.pixels.offset, spec.pixels.scale), "file", spec.max_rows)
    fields = {name: _form_value(name, value) for name, value in form.items() if name != "file"}
    return Rows(rows, _options(request, spec, fields))


async def _npy_rows(request: Request, spec: RowsRequest) -> Rows:
    options = _options(request, spec)
    check = bodies.NpyRows(spec.row_shape, spec.max_rows, spec.key, declared_length(request))
    array = codecs.load_npy(await bodies.read(request.stream(), check))
    return Rows(codecs.shaped(array, spec.row_shape, spec.key, spec.max_rows), options)


async def _csv_rows(request: Request, spec: RowsRequest) -> Rows:
    options = _options(request, spec)
    features = math.prod(spec.row_shape)
    parser = bodies.CsvRows(spec.feature_names, features, spec.max_rows, spec.key, spec.label_column)
    # The csv module is Python: each chunk is parsed in a thread, where the event loop can interleave with it.
    async for chunk in request.stream():
        with bodies.cut_short():
            await to_thread.run_sync(parser, chunk)
    return Rows(codecs.shaped(parser.rows(), spec.row_shape, spec.key, spec.max_rows), options, parser.labels())


async def _raw_rows(request: Request, spec: RowsRequest) -> Rows:
    options = _options(request, spec)
    headers = request.headers
    dims, kind = codecs.raw_layout(headers.get("x-shape"), headers.get("x-dtype"))
    batch = codecs.batch_shape(dims, spec.row_shape)
    if batch is not None and batch[0] > spec.max_rows:  # refused before a byte of the body is read
        with bodies.cut_short():
            raise ServiceError(
                413, "too_many_rows", f"{spec.key} has {batch[0]} rows; at most {spec.max_rows} per request"
            )
    body = await bodies.read(request.stream(), bodies.ByteLimit(math.prod(dims) * kind.itemsize, dims, kind))
    array = codecs.load_raw(body, headers.get("x-shape"), headers.get("x-dtype"))
    return Rows(codecs.shaped(array, spec.row_shape, spec.key, spec.max_rows), options)


def declared_length(request: Request) -> int | None:
    """The Content-Length a request declares; None without one (chunked) or when malformed."""
    declared = request.headers.get("content-length", "")
    return int(declared) if declared.isascii() and declared.isdigit() else None


def _options(request: Request, spec: RowsRequest, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The route's options from the query string (`?top_features=2`) and the body's own fields, checked and
    defaulted; one given both ways is refused rather than one of the two silently winning."""
    return _options_of(_query(request), spec, given)


def _query(request: Request) -> list[tuple[str, str]]:
    return [(name, value) for name, value in request.query_params.multi_items() if name not in ("model", "version")]


def _options_of(query: list[tuple[str, str]], spec: RowsRequest, given: dict[str, Any] | None) -> dict[str, Any]:
    repeated = sorted(name for name, count in Counter(name for name, _ in query).items() if count > 1)
    if repeated:
        raise ServiceError(400, "invalid_request", f"option(s) {repeated[:10]} are given more than once in the query")
    fields = {name: _form_value(name, value) for name, value in query}
    codecs.check_fields(fields, [], list(spec.options))
    both = sorted(set(fields) & set(given or {}))
    if both:
        raise ServiceError(400, "invalid_request", f"option(s) {both} are given both in the query string and the body")
    fields |= given or {}
    codecs.check_fields(fields, [], list(spec.options))
    return {name: codecs.option(fields, name, kind, default) for name, (kind, default) in spec.options.items()}


def _form_value(name: str, value: Any) -> Any:
    # Form fields arrive as text; `true` or `3` are read as the JSON values they spell.
    try:
        return orjson.loads(value) if isinstance(value, str) else value
    except orjson.JSONDecodeError:
        raise ServiceError(422, "invalid_request", f"form field {name} is not a JSON value: {value!r}") from None


_Reader = Callable[[Request, RowsRequest], Awaitable[Rows]]
_READERS: dict[str, _Reader] = {
    codecs.JSON: _json_rows,
    codecs.NPY: _npy_rows,
    codecs.RAW: _raw_rows,
    codecs.CSV: _csv_rows,
    codecs.MULTIPART: _upload_rows,
}


def respond(request: Request, result: Result) -> Response:
    """The result in the media type the Accept header prefers among those this result can be written as."""
    png = result.images is not None and result.pixels is not None
    offered = [*_WRITERS] if png else [m for m in _WRITERS if m != codecs.PNG]
    media = codecs.negotiate(request.headers.get("accept"), offered)
    if media is None:
        raise ServiceError(406, "not_acceptable", f"this answer is available as {offered} only")
    with tracing.span("encode", media_type=media):
        return _WRITERS[media](result)


def _write_json(result: Result) -> Response:
    return Response(codecs.dump_json(result.body), media_type=codecs.JSON)


def _write_png(result: Result) -> Response:
    assert result.images is not None and result.pixels is not None
    pixels = images.to_pixels(result.images, result.pixels.offset, result.pixels.scale)
    return Response(images.png_grid(pixels), media_type=codecs.PNG)


def _binary_headers(result: Result) -> dict[str, str]:
    main = result.body[result.main]
    headers = {"X-Shape": ",".join(map(str, main.shape)), "X-Dtype": "float32"}
    headers |= {"X-Model": str(result.body["model"]), "X-Version": str(result.body["version"])}
    if "threshold" in result.body:
        headers["X-Threshold"] = repr(float(result.body["threshold"]))
    return headers


def _write_npy(result: Result) -> Response:
    body = codecs.dump_npy(result.body[result.main].astype(np.float32, copy=False))
    return Response(body, media_type=codecs.NPY, headers=_binary_headers(result))


def _write_raw(result: Result) -> Response:
    return Response(codecs.dump_raw(result.body[result.main]), media_type=codecs.RAW, headers=_binary_headers(result))


def _write_npz(result: Result) -> Response:
    # Arrays and numbers only: explanations (top_features) are JSON's.
    arrays = {
        name: np.asarray(value)
        for name, value in result.body.items()
        if name not in ("model", "version") and isinstance(value, np.ndarray | float | int | bool)
    }
    return Response(codecs.dump_npz(arrays), media_type=codecs.NPZ, headers=_binary_headers(result))


# In order of preference when the Accept header leaves the choice open.
_WRITERS: dict[str, Callable[[Result], Response]] = {
    codecs.JSON: _write_json,
    codecs.NPY: _write_npy,
    codecs.RAW: _write_raw,
    codecs.NPZ: _write_npz,
    codecs.PNG: _write_png,
}
