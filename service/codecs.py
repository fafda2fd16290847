"""Payloads to numpy and back. JSON goes through orjson straight into numpy (no per-float validation
objects); media types are looked up in tables, so a binary codec is one more row, not a new branch."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from service import fastjson
from service.errors import ServiceError

JSON = "application/json"
PNG = "image/png"
MULTIPART = "multipart/form-data"
NPY = "application/x-npy"
NPZ = "application/x-npz"
CSV = "text/csv"
RAW = "application/octet-stream"

# Raw bodies are little-endian float32 unless X-Dtype names another of these.
RAW_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "float16": np.dtype("<f2"),
    "uint8": np.dtype("u1"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
}

# What np.asarray makes of parsed JSON: numbers pass, every other kind is named in the 422.
_NUMERIC_KINDS = {"f": "floats", "i": "integers", "u": "integers"}
_OTHER_KINDS = {"b": "booleans", "U": "strings", "O": "nulls, objects or mixed values"}

# Option types as JSON names them; bool is checked exactly because True is also an int in Python.
_OPTION_TYPES: dict[type, str] = {bool: "true or false", int: "an integer"}


# More than any row shape needs (images are [n, H, W, C]); numpy itself stops at 64.
MAX_DIMS = 8


def media_type(header: str | None) -> str:
    """`application/json; charset=utf-8` -> `application/json`; a missing header means JSON."""
    return (header or JSON).split(";", 1)[0].strip().lower() or JSON


def load_json(body: bytes) -> dict[str, Any]:
    """A JSON object; 400 when the body is not JSON at all."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        value = _lenient_json(body, exc)
    if not isinstance(value, dict):
        raise ServiceError(422, "invalid_request", 'the body must be a JSON object, e.g. {"inputs": [...]}')
    return value


def load_json_with_rows(
    body: bytes, key: str, options: Mapping[str, tuple[type, Any]] | None = None, fast_only: bool = False
) -> dict[str, Any] | None:
    """load_json, with the rows in field `key` read by simdjson straight into numpy whenever the body allows
    that exactly (service.fastjson); the same answer and the same errors either way. Fields are checked
    (`check_fields`) before any value is converted, so an unknown field costs nothing to refuse.
    `fast_only`: None instead of the slower ways, which the caller may run elsewhere (in a thread)."""
    element = fastjson.parse(body)
    options = options or {}
    if element is not None and fastjson.is_object(element):
        check_fields(dict.fromkeys(element.keys()), [key], list(options))
        # Options are scalars, checked in order as the routes check them (before the rows): one given as a
        # list is refused without converting it.
        for name, (kind, default) in options.items():
            value = element.get(name, default)
            if fastjson.is_list(value) or fastjson.is_dict(value):
                raise ServiceError(422, "invalid_request", f"{name} must be {_OPTION_TYPES[kind]}, got {shown(value)}")
            option({name: value}, name, kind, default)
        value = fastjson.convert(element, ((key,),), body)
        if isinstance(value, dict):
            return value
        if fast_only:
            return None
        value = fastjson.plain(element, key)
        if isinstance(value, dict):
            return value
    if fast_only:
        return None
    del element  # the parser's buffers go with it
    value = load_json(body)
    check_fields(value, [key], list(options or {}))
    return value


# Python's json module takes about 100 ms per MB: above this, a body orjson refuses is just malformed.
LENIENT_MAX_BYTES = 256 * 1024


def _lenient_json(body: bytes, error: orjson.JSONDecodeError) -> Any:
    # orjson refuses NaN, Infinity and 1e400. Python's json module reads them, so a client that sends them
    # gets the precise 422 (non-finite values) instead of a vague 400. Only the failure path pays for this,
    # and only for bodies small enough not to hold up the event loop.
    if len(body) > LENIENT_MAX_BYTES:
        raise ServiceError(400, "malformed_json", f"the body is not valid JSON: {error}")
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise ServiceError(400, "malformed_json", f"the body is not valid JSON: {error}") from None


def check_fields(body: dict[str, Any], required: Sequence[str], optional: Sequence[str] = ()) -> None:
    """Refuses missing and unknown fields, so a typo in an option name is an error, not a silent default."""
    missing = [name for name in required if name not in body]
    unknown = sorted(set(body) - set(required) - set(optional))
    expected = [*required, *optional]
    if missing:
        raise ServiceError(422, "invalid_request", f"missing field(s) {missing}; the fields are {expected}")
    if unknown:
        raise ServiceError(422, "invalid_request", f"unknown field(s) {unknown}; the fields are {expected}")


def integral(value: Any) -> Any:
    """An integral JSON float (4.0) as the integer it is, as JSON Schema counts it; anything else as given."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


def option(body: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = body.get(name, default)
    if kind is int:
        value = integral(value)
    if value is not default and type(value) is not kind:
        raise ServiceError(422, "invalid_request", f"{name} must be {_OPTION_TYPES[kind]}, got {shown(value)}")
    return value


def shown(value: Any) -> str:
    """A value as an error message names it: lists and objects by kind, others by their first characters."""
    if isinstance(value, list | dict) or fastjson.is_list(value) or fastjson.is_dict(value):
        return "a list" if isinstance(value, list) or fastjson.is_list(value) else "an object"
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def as_batch(
    value: Any, row_shape: tuple[int, ...], field: str, max_rows: int, names: Sequence[str] | None = None
) -> np.ndarray:
    """Rows [n, *row_shape] float32 from nested lists; a single row may come without the outer list. A
    model with feature names also takes rows as objects of name -> value."""
    if isinstance(value, list) and not value:
        raise ServiceError(422, "empty_batch", f"{field} is empty: send at least one row")
    if isinstance(value, dict) or (isinstance(value, list) and isinstance(value[0], dict)):
        value = rows_by_name([value] if isinstance(value, dict) else value, names, field)
    try:
        array = as_array(value)
    except (ValueError, OverflowError):
        raise ServiceError(422, "invalid_shape", f"{field}: rows are ragged; {_expected(row_shape)}") from None
    if array.dtype.kind in _NUMERIC_KINDS and holds_booleans(value):
        raise ServiceError(422, "invalid_dtype", f"{field} must hold numbers only, found booleans")
    return shaped(array, row_shape, field, max_rows)


# Lists of lists longer than this are converted a row at a time.
ROW_BY_ROW = 64


def as_array(value: Any) -> np.ndarray:
    """np.asarray of parsed JSON, of the same shape and kind of dtype; a long list of lists is converted a
    row at a time, so that no one call holds the GIL for long (large bodies are read in a thread beside the
    event loop, which then gets its turns between rows)."""
    if type(value) is not list or len(value) < ROW_BY_ROW or type(value[0]) is not list:
        return np.asarray(value)
    rows = [np.asarray(row) for row in value]
    if len({row.shape for row in rows}) != 1:
        raise ValueError("ragged rows")
    kinds = {row.dtype.kind for row in rows}
    if kinds <= {"b", "i", "u", "f"}:
        return np.stack(rows)  # numbers (and booleans) promote as np.asarray promotes them
    # Anything else is refused by its kind alone: objects (null, mixed) over strings, as np.asarray does.
    return np.empty((len(rows), *rows[0].shape), dtype=object if "O" in kinds else "U1")


def holds_booleans(value: Any) -> bool:
    """Whether parsed JSON lists hold a boolean, which np.asarray reads as 1 among numbers. Arrays from
    service.fastjson are numbers already: only lists need the walk."""
    if type(value) is list:
        return any(map(holds_booleans, value))
    return type(value) is bool


def rows_by_name(rows: list[Any], names: Sequence[str] | None, field: str) -> list[list[Any]]:
    """Rows given as {feature name: value} objects, as lists in the model's feature order."""
    if names is None:
        raise ServiceError(422, "invalid_request", f"{field}: this model has no feature names; send rows as lists")
    expected = set(names)
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ServiceError(422, "invalid_shape", f"{field}: row {index} is not an object like the rows before it")
        missing, unknown = sorted(expected - row.keys()), sorted(row.keys() - expected)
        problems = [f"lacks {few(missing)}"] * bool(missing) + [f"has unknown {few(unknown)}"] * bool(unknown)
        if problems:
            raise ServiceError(
                422,
                "invalid_request",
                f"{field}: row {index} {' and '.join(problems)}; the features are {few(list(names))}",
            )
    return [[row[name] for name in names] for row in rows]


def split_labels(value: Any, column: str | None, field: str) -> tuple[Any, list[Any] | None]:
    """Rows given as objects without the model's label column, and its values (None where a row has none);
    no labels when no row names the column. Labels are scalars: a list or object there is refused."""
    rows = [value] if isinstance(value, dict) else value
    if column is None or not isinstance(rows, list) or not any(isinstance(row, dict) and column in row for row in rows):
        return value, None
    labels = [row.get(column) if isinstance(row, dict) else None for row in rows]
    for index, label in enumerate(labels):
        if isinstance(label, list | dict):
            raise ServiceError(
                422, "invalid_request", f"{field}: row {index}'s {column!r} must be a string, number or null"
            )
    rest = [{k: v for k, v in row.items() if k != column} if isinstance(row, dict) else row for row in rows]
    return (rest[0] if isinstance(value, dict) else rest), labels


def few(names: list[str]) -> str:
    return str(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")


def shaped(array: np.ndarray, row_shape: tuple[int, ...], field: str, max_rows: int) -> np.ndarray:
    """Rows [n, *row_shape] float32 from an array of any payload: a batch, one row, or rows flattened to
    vectors (image rows as 784 floats instead of 28 x 28: never ambiguous, the ranks differ)."""
    if array.dtype.kind not in _NUMERIC_KINDS:
        found = _OTHER_KINDS.get(array.dtype.kind, str(array.dtype))
        raise ServiceError(422, "invalid_dtype", f"{field} must hold numbers only, found {found}")
    batch = batch_shape(array.shape, row_shape)
    if batch is None:
        raise ServiceError(422, "invalid_shape", f"{field} has shape {list(array.shape)}; {_expected(row_shape)}")
    return checked_rows(array.reshape(batch), field, max_rows)


def batch_shape(shape: tuple[int, ...], row_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The [n, *row_shape] an array of this shape is read as (see `shaped`); None when it holds no rows of
    that shape. Known from headers alone, so a binary body's row count is checked before it is read."""
    features = math.prod(row_shape)
    if shape != row_shape and len(row_shape) > 1 and len(shape) in (1, 2) and shape[-1] == features:
        return (math.prod(shape) // features, *row_shape)
    if len(shape) == len(row_shape):
        shape = (1, *shape)
    return shape if shape[1:] == row_shape else None


@dataclass(frozen=True)
class NpyHeader:
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    offset: int  # where the array's bytes start

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


NPY_MAGIC = b"\x93NUMPY"
# What numpy itself reads: longer headers are refused by np.load too.
MAX_NPY_HEADER = 10_000
_NPY_HEADERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
    (3, 0): np.lib.format.read_array_header_2_0,  # 3.0 is 2.0 with a UTF-8 header: the same for numbers
}


def npy_header(data: bytes) -> NpyHeader | None:
    """The header at the start of a .npy file; None while `data` is too short to hold all of it."""
    if not NPY_MAGIC.startswith(data[:6]) or (len(data) >= 4 and data[:4] == b"PK\x03\x04"):
        what = "an .npz archive; send one .npy array" if data[:4] == b"PK\x03\x04" else "not a .npy file"
        raise _bad_npy(what)
    if len(data) < 8:
        return None
    version = (data[6], data[7])
    read_header = _NPY_HEADERS.get(version)
    if read_header is None:
        raise _bad_npy(f"format version {version[0]}.{version[1]} is not one of {sorted(_NPY_HEADERS)}")
    size_bytes = 2 if version == (1, 0) else 4
    if len(data) < 8 + size_bytes:
        return None
    offset = 8 + size_bytes + int.from_bytes(data[8 : 8 + size_bytes], "little")
    if offset > MAX_NPY_HEADER:
        raise _bad_npy(f"its header is longer than {MAX_NPY_HEADER} bytes")
    if len(data) < offset:
        return None
    try:
        stream = io.BytesIO(data[:offset])
        stream.seek(8)
        shape, fortran, dtype = read_header(stream)
    except (ValueError, OSError, EOFError, TypeError) as exc:
        raise _bad_npy(str(exc)) from None
    if dtype.hasobject:
        raise _bad_npy("object arrays are refused (they would need unpickling)")
    # np.load reshapes what these describe in ways no row can be: a subarray dtype adds axes, a size of 0
    # divides nothing, and a shape of booleans or negative numbers can still multiply to the bytes sent.
    if dtype.subdtype is not None or dtype.itemsize == 0:
        raise _bad_npy(f"its dtype {dtype.str!r} is not a plain number type")
    if not all(type(dim) is int and dim >= 0 for dim in shape):
        raise _bad_npy(f"its shape {list(shape)[:10]} is not of non-negative integers")
    return NpyHeader(tuple(shape), dtype, fortran, offset)


def load_npy(body: bytes) -> np.ndarray:
    """An array from a .npy file, read without np.load: the header is checked against the bytes that
    follow it (np.load allocates what a header claims), and nothing is ever unpickled."""
    header = npy_header(body)
    if header is None:
        raise _bad_npy(f"{len(body)} bytes end before its header does")
    held = len(body) - header.offset
    if held != header.nbytes:
        raise _bad_npy(f"its header says shape {list(header.shape)} ({header.nbytes} bytes) but {held} bytes follow")
    check_axes(header.shape, "the array", "malformed_npy")
    array = np.frombuffer(body, dtype=header.dtype, count=math.prod(header.shape), offset=header.offset)
    return array.reshape(header.shape, order="F" if header.fortran else "C")


def _bad_npy(why: str) -> ServiceError:
    return ServiceError(400, "malformed_npy", f"the body is not a readable .npy file: {why}")


# Larger than any axis a valid request has; numpy itself fails on axes near 2^63 even when another is 0.
MAX_AXIS = 2**32


def check_axes(shape: Sequence[int], where: str, code: str = "invalid_shape_header") -> None:
    """400 for a shape no array here can have: too many dimensions, or an axis beyond MAX_AXIS."""
    if len(shape) > MAX_DIMS or any(dim > MAX_AXIS for dim in shape):
        raise ServiceError(
            400,
            code,
            f"{where} must have at most {MAX_DIMS} dimensions of at most {MAX_AXIS} each, got {list(shape)[:10]}",
        )


def raw_layout(shape: str | None, dtype: str | None) -> tuple[tuple[int, ...], np.dtype]:
    """The dimensions and dtype the X-Shape and X-Dtype headers of a raw body declare."""
    if not shape:
        raise ServiceError(400, "missing_shape", f"{RAW} bodies need an X-Shape header, e.g. X-Shape: 64,784")
    parts = [part.strip() for part in shape.split(",")]
    # int() also reads non-ASCII digits and "1_0", and refuses 4,300 digits with its own error: only up to 19
    # ASCII digits are a dimension.
    if len(parts) > MAX_DIMS or not all(part.isascii() and part.isdigit() and len(part) < 20 for part in parts):
        raise ServiceError(
            400,
            "invalid_shape_header",
            f"X-Shape must be at most {MAX_DIMS} comma-separated integers, got {shape[:80]!r}",
        )
    dims = tuple(int(part) for part in parts)
    check_axes(dims, "X-Shape")
    kind = RAW_DTYPES.get((dtype or "float32").strip().lower())
    if kind is None:
        raise ServiceError(415, "invalid_dtype", f"X-Dtype {dtype!r} is not one of {sorted(RAW_DTYPES)}")
    return dims, kind


def load_raw(body: bytes, shape: str | None, dtype: str | None) -> np.ndarray:
    """An array from raw little-endian bytes, shaped by the X-Shape header (e.g. `64,784`)."""
    dims, kind = raw_layout(shape, dtype)
    needed = math.prod(dims) * kind.itemsize
    if len(body) != needed:
        raise ServiceError(
            422, "invalid_length", f"the body has {len(body)} bytes; X-Shape {list(dims)} of {kind.name} needs {needed}"
        )
    return np.frombuffer(body, dtype=kind).reshape(dims)


def dump_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def dump_npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    return buffer.getvalue()


def dump_raw(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype="<f4").tobytes()


def checked_rows(array: np.ndarray, field: str, max_rows: int) -> np.ndarray:
    """The checks every payload format shares: row count, float32, finite values."""
    if len(array) == 0:
        raise ServiceError(422, "empty_batch", f"{field} has no rows: send at least one")
    if len(array) > max_rows:
        raise ServiceError(413, "too_many_rows", f"{field} has {len(array)} rows; at most {max_rows} per request")
    with np.errstate(over="ignore"):  # values beyond float32's range become inf, refused just below
        array = np.ascontiguousarray(array, dtype=np.float32)
    rows = non_finite_rows(array)
    if rows:
        raise ServiceError(422, "non_finite", f"{field} holds NaN or infinite values (rows {rows})")
    return array


def non_finite_rows(array: np.ndarray, limit: int = 10) -> list[int]:
    """The first `limit` rows holding NaN or an infinity (none: an empty list)."""
    # One pass answers for almost every request: a finite sum means every value is finite (NaN and the
    # infinities carry through a sum); a sum that overflows is looked at row by row.
    if array.dtype.kind != "f" or np.isfinite(array.sum(dtype=np.float64)):
        return []
    finite = np.isfinite(array).reshape(len(array), -1).all(axis=1)
    return np.flatnonzero(~finite)[:limit].tolist()


def _expected(row_shape: tuple[int, ...]) -> str:
    shape = list(row_shape)
    return f"expected one row of shape {shape} or a batch of shape {['n', *shape]}".replace("'", "")


def dump_json(payload: Any) -> bytes:
    """numpy arrays are written by orjson directly, without a detour through Python lists."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


MAX_ACCEPT_CHARS = 1024


def negotiate(accept: str | None, offered: Sequence[str]) -> str | None:
    """The offered media type the Accept header prefers (ties: the first offered); None when none fits."""
    if not accept:
        return offered[0]
    if len(accept) > MAX_ACCEPT_CHARS:  # real ones are a few dozen characters; parsing megabytes stalls the loop
        raise ServiceError(400, "invalid_request", f"the Accept header is longer than {MAX_ACCEPT_CHARS} characters")
    ranges = [_media_range(part) for part in accept.split(",") if part.strip()]
    best, best_q = None, 0.0
    for media in offered:
        q = _quality(ranges, media)
        if q > best_q:
            best, best_q = media, q
    return best


def _media_range(part: str) -> tuple[str, float]:
    pattern, *params = (p.strip() for p in part.split(";"))
    q = 1.0
    for param in params:
        key, _, value = param.partition("=")
        if key.strip() == "q":
            try:
                q = float(value)
            except ValueError:
                q = 0.0
    return pattern.lower(), q if math.isfinite(q) else 0.0


def _quality(ranges: list[tuple[str, float]], media: str) -> float:
    """q of the most specific range matching `media` (RFC 9110: image/png;q=0 beats */*)."""
    matching = [(_specificity(pattern, media), q) for pattern, q in ranges]
    return max(((s, q) for s, q in matching if s >= 0), default=(0, 0.0))[1]


def _specificity(pattern: str, media: str) -> int:
    if pattern == media:
        return 2
    kind, _, sub = pattern.partition("/")
    if sub == "*" and (kind == "*" or media.startswith(kind + "/")):
        return 0 if kind == "*" else 1
    return -1
