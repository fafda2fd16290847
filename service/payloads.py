"""HTTP requests to numpy rows plus options, and results back to HTTP responses, by media type.

Each Content-Type has a reader and each Accept type a writer, in tables: binary formats (application/x-npy,
raw float32) are new rows here, and the routes and the runtime do not change."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from fastapi import Request, Response
from starlette.datastructures import UploadFile

from service import codecs, images
from service.errors import ServiceError
from service.runtime import ModelRuntime

# An option a route takes besides its rows: name -> (type, default).
Options = Mapping[str, tuple[type, Any]]


@dataclass(frozen=True)
class RowsRequest:
    """What a route reads: the JSON field holding the rows, their shape, the options, whether images may come."""

    key: str
    row_shape: tuple[int, ...]
    max_rows: int
    options: Options = field(default_factory=dict)
    uploads: bool = False
    max_image_pixels: int = 0


@dataclass
class Result:
    """A route's answer: the JSON body, and for image models the rows a PNG answer would show."""

    body: dict[str, Any]
    images: np.ndarray | None = None


async def read_rows(request: Request, spec: RowsRequest, runtime: ModelRuntime) -> tuple[np.ndarray, dict[str, Any]]:
    media = codecs.media_type(request.headers.get("content-type"))
    readers = _READERS if spec.uploads else {codecs.JSON: _READERS[codecs.JSON]}
    reader = readers.get(media)
    if reader is None:
        raise ServiceError(415, "unsupported_media_type", f"{media} is not accepted here; send {sorted(readers)}")
    return await reader(request, spec, runtime)


async def read_json(request: Request, required: list[str], options: Options) -> dict[str, Any]:
    """A JSON body with these fields, options type-checked and defaulted (for routes without rows)."""
    media = codecs.media_type(request.headers.get("content-type"))
    if media != codecs.JSON:
        raise ServiceError(415, "unsupported_media_type", f"{media} is not accepted here; send {codecs.JSON}")
    body = codecs.load_json(await request.body())
    codecs.check_fields(body, required, list(options))
    values = {name: body[name] for name in required}
    return values | {name: codecs.option(body, name, kind, default) for name, (kind, default) in options.items()}


async def _json_rows(request: Request, spec: RowsRequest, runtime: ModelRuntime) -> tuple[np.ndarray, dict[str, Any]]:
    body = codecs.load_json(await request.body())
    codecs.check_fields(body, [spec.key], list(spec.options))
    rows = codecs.as_batch(body[spec.key], spec.row_shape, spec.key, spec.max_rows)
    options = {name: codecs.option(body, name, kind, default) for name, (kind, default) in spec.options.items()}
    return rows, options


async def _upload_rows(request: Request, spec: RowsRequest, runtime: ModelRuntime) -> tuple[np.ndarray, dict[str, Any]]:
    if runtime.manifest.input.kind != "image":
        raise ServiceError(415, "unsupported_media_type", f"{codecs.MULTIPART} uploads are for image models only")
    # Room for a few unknown fields, so check_fields names them instead of the parser refusing the form.
    form = await request.form(max_files=spec.max_rows, max_fields=len(spec.options) + 8)
    files = [item for item in form.getlist("file") if isinstance(item, UploadFile)]
    if not files:
        raise ServiceError(422, "invalid_request", 'send the image in the multipart field "file"')
    pixels = np.stack([images.decode_image(await f.read(), spec.row_shape, spec.max_image_pixels) for f in files])
    offset, scale = runtime.manifest.normalisation()
    rows = codecs.checked_rows(images.from_pixels(pixels, offset, scale), "file", spec.max_rows)
    fields = {name: _form_value(name, value) for name, value in form.items() if name != "file"}
    codecs.check_fields(fields, [], list(spec.options))
    options = {name: codecs.option(fields, name, kind, default) for name, (kind, default) in spec.options.items()}
    return rows, options


def _form_value(name: str, value: Any) -> Any:
    # Form fields arrive as text; `true` or `3` are read as the JSON values they spell.
    try:
        return orjson.loads(value) if isinstance(value, str) else value
    except orjson.JSONDecodeError:
        raise ServiceError(422, "invalid_request", f"form field {name} is not a JSON value: {value!r}") from None


_Reader = Callable[[Request, RowsRequest, ModelRuntime], Awaitable[tuple[np.ndarray, dict[str, Any]]]]
_READERS: dict[str, _Reader] = {codecs.JSON: _json_rows, codecs.MULTIPART: _upload_rows}


def respond(request: Request, runtime: ModelRuntime, result: Result) -> Response:
    """The result in the media type the Accept header prefers among those this result can be written as."""
    offered = [codecs.JSON] if result.images is None else [codecs.JSON, codecs.PNG]
    media = codecs.negotiate(request.headers.get("accept"), offered)
    if media is None:
        raise ServiceError(406, "not_acceptable", f"this answer is available as {offered} only")
    return _WRITERS[media](runtime, result)


def _write_json(runtime: ModelRuntime, result: Result) -> Response:
    return Response(codecs.dump_json(result.body), media_type=codecs.JSON)


def _write_png(runtime: ModelRuntime, result: Result) -> Response:
    assert result.images is not None
    offset, scale = runtime.manifest.normalisation()
    return Response(images.png_grid(images.to_pixels(result.images, offset, scale)), media_type=codecs.PNG)


_WRITERS: dict[str, Callable[[ModelRuntime, Result], Response]] = {codecs.JSON: _write_json, codecs.PNG: _write_png}
