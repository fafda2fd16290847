"""Payloads to numpy and back. JSON goes through orjson straight into numpy (no per-float validation
objects); media types are looked up in tables, so a binary codec is one more row, not a new branch."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from service.errors import ServiceError

JSON = "application/json"
PNG = "image/png"
MULTIPART = "multipart/form-data"

# What np.asarray makes of parsed JSON: numbers pass, every other kind is named in the 422.
_NUMERIC_KINDS = {"f": "floats", "i": "integers", "u": "integers"}
_OTHER_KINDS = {"b": "booleans", "U": "strings", "O": "nulls, objects or mixed values"}

# Option types as JSON names them; bool is checked exactly because True is also an int in Python.
_OPTION_TYPES: dict[type, str] = {bool: "true or false", int: "an integer"}


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


def _lenient_json(body: bytes, error: orjson.JSONDecodeError) -> Any:
    # orjson refuses NaN, Infinity and 1e400. Python's json module reads them, so a client that sends them
    # gets the precise 422 (non-finite values) instead of a vague 400. Only the failure path pays for this.
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


def option(body: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = body.get(name, default)
    if value is not default and type(value) is not kind:
        raise ServiceError(422, "invalid_request", f"{name} must be {_OPTION_TYPES[kind]}, got {value!r}")
    return value


def as_batch(value: Any, row_shape: tuple[int, ...], field: str, max_rows: int) -> np.ndarray:
    """Rows [n, *row_shape] float32 from nested lists; a single row may come without the outer list."""
    if isinstance(value, list) and not value:
        raise ServiceError(422, "empty_batch", f"{field} is empty: send at least one row")
    try:
        array = np.asarray(value)
    except (ValueError, OverflowError):
        raise ServiceError(422, "invalid_shape", f"{field}: rows are ragged; {_expected(row_shape)}") from None
    if array.dtype.kind not in _NUMERIC_KINDS:
        found = _OTHER_KINDS.get(array.dtype.kind, str(array.dtype))
        raise ServiceError(422, "invalid_dtype", f"{field} must hold numbers only, found {found}")
    if array.ndim == len(row_shape):
        array = array[np.newaxis]
    if array.shape[1:] != row_shape:
        raise ServiceError(422, "invalid_shape", f"{field} has shape {list(array.shape)}; {_expected(row_shape)}")
    return checked_rows(array, field, max_rows)


def checked_rows(array: np.ndarray, field: str, max_rows: int) -> np.ndarray:
    """The checks every payload format shares: row count, float32, finite values."""
    if len(array) > max_rows:
        raise ServiceError(413, "too_many_rows", f"{field} has {len(array)} rows; at most {max_rows} per request")
    with np.errstate(over="ignore"):  # values beyond float32's range become inf, refused just below
        array = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(array).reshape(len(array), -1).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)[:10].tolist()
        raise ServiceError(422, "non_finite", f"{field} holds NaN or infinite values (rows {rows})")
    return array


def _expected(row_shape: tuple[int, ...]) -> str:
    shape = list(row_shape)
    return f"expected one row of shape {shape} or a batch of shape {['n', *shape]}".replace("'", "")


def dump_json(payload: dict[str, Any]) -> bytes:
    """numpy arrays are written by orjson directly, without a detour through Python lists."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def negotiate(accept: str | None, offered: Sequence[str]) -> str | None:
    """The offered media type the Accept header prefers (ties: the first offered); None when none fits."""
    if not accept:
        return offered[0]
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
