"""JSON bodies whose bulk is nested arrays of numbers, parsed by simdjson with those numbers going straight
into numpy, never through Python floats (about 2.5x faster than orjson plus np.asarray for 64 x 784 rows).

`convert` gives exactly what orjson.loads followed by np.asarray on the numeric arrays would give, or None:
then the caller takes the orjson path, which also owns every error message. So it only accepts what it can
prove: no duplicate keys where it walks objects, numeric arrays whose levels are of equal lengths and whose
numbers a float64 holds exactly as orjson would read them, and (the proof that no array hides among the
leaves, which simdjson's buffer would flatten) as many `[` characters in the text as the document has
arrays, counting those inside its strings. Every step is linear in the document: arrays and objects are
iterated, never indexed, and subtrees that cannot hold a numeric array are converted by simdjson's C code."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import simdjson

# A path pattern: object keys, and None for any array index. A numeric array is one whose path matches.
Pattern = tuple[str | None, ...]
Path = tuple[str | int, ...]

# Objects on the way to a numeric array are walked in Python, and simdjson looks a key up by scanning: an
# object with more keys than this is left to orjson (and the callers refuse such objects before converting).
MAX_WALKED_KEYS = 64
# Integers beyond 2^53 lose digits in a float64, where orjson keeps them exact.
EXACT_INTEGERS = 2.0**53


class _NotExact(Exception):
    """The document is not one this module can convert exactly; the caller falls back to orjson."""


# Bodies up to this size (a 1,024 x 784 batch written with full float precision) share one parser, whose
# buffers stay warm; a larger body gets a parser of its own, freed with it, so what outlives a request is
# bounded by this size, not by the largest body ever sent.
SHARED_PARSER_BYTES = 8 * 1024 * 1024
_PARSER = simdjson.Parser()


def parse(body: bytes) -> Any | None:
    """The document as simdjson elements (lazy: converted by `convert`); None when simdjson refuses it
    (malformed, or numbers it cannot hold such as 1e400: orjson then says what is wrong)."""
    try:
        return _parse(body)
    except Exception:  # simdjson's refusals come as several types (ValueError, RuntimeError...)
        return None


def is_object(element: Any) -> bool:
    return isinstance(element, simdjson.Object)


def is_dict(value: Any) -> bool:
    """A JSON object, parsed (simdjson's) or converted (a dict)."""
    return isinstance(value, dict | simdjson.Object)


def is_list(value: Any) -> bool:
    """A JSON array, parsed (simdjson's) or converted (a list)."""
    return isinstance(value, list | simdjson.Array)


def convert(element: Any, numeric: tuple[Pattern, ...], text: bytes) -> Any | None:
    """The element parsed from `text` as Python values, each non-empty array at a path matching one of
    `numeric` as a float64 ndarray shaped as np.asarray would shape the nested lists; None when that cannot
    be done exactly."""
    brackets = [0]
    try:
        value = _convert(element, (), numeric, brackets)
    except Exception:  # _NotExact, and simdjson's own refusals
        return None
    return value if text.count(b"[") == brackets[0] else None


def plain(element: Any, rows: str) -> dict[str, Any] | None:
    """A parsed object as orjson.loads gives it (lists, not arrays), its field `rows` converted an item at a
    time so that no one call holds the GIL for long (service.payloads reads large bodies in a thread); None
    when a key repeats (orjson keeps the last)."""
    try:
        keys = list(element.keys())
        if len(set(keys)) != len(keys):
            return None
        value = {key: _plain(element[key]) for key in keys if key != rows}
        if rows in keys:
            items = element[rows]
            value[rows] = [_plain(item) for item in items] if isinstance(items, simdjson.Array) else _plain(items)
    except Exception:  # simdjson's refusals (a key it cannot look up): orjson then
        return None
    return value


def _plain(element: Any) -> Any:
    if isinstance(element, simdjson.Object):
        return element.as_dict()
    return element.as_list() if isinstance(element, simdjson.Array) else element


def loads(body: bytes, numeric: tuple[Pattern, ...]) -> Any | None:
    """parse, then convert."""
    element = parse(body)
    return None if element is None else convert(element, numeric, body)


def _parse(body: bytes) -> Any:
    if len(body) > SHARED_PARSER_BYTES:
        return simdjson.Parser().parse(body)
    # A parser's buffers are reused by its next parse, which simdjson refuses while anything of the previous
    # document is still referenced (another thread's, or one a traceback holds): a fresh parser then.
    try:
        return _PARSER.parse(body)
    except RuntimeError as exc:
        if "re-use a parser" not in str(exc):
            raise
    return simdjson.Parser().parse(body)


def _matches(path: Path, pattern: Pattern) -> bool:
    return len(path) == len(pattern) and all(_step(part, want) for part, want in zip(path, pattern, strict=True))


def _leads_to(path: Path, pattern: Pattern) -> bool:
    return len(path) < len(pattern) and all(_step(part, want) for part, want in zip(path, pattern, strict=False))


def _step(part: str | int, want: str | None) -> bool:
    return isinstance(part, int) if want is None else part == want


def _convert(element: Any, path: Path, numeric: tuple[Pattern, ...], brackets: list[int]) -> Any:
    is_object, is_array = isinstance(element, simdjson.Object), isinstance(element, simdjson.Array)
    if not (is_object or is_array):
        brackets[0] += _brackets(element)
        return element
    if is_array and len(element) and any(_matches(path, pattern) for pattern in numeric):
        array, count = _numbers(element)
        brackets[0] += count
        return array
    if not any(_leads_to(path, pattern) for pattern in numeric):
        value = element.as_dict() if is_object else element.as_list()
        brackets[0] += _brackets(value)
        return value
    if is_array:
        brackets[0] += 1
        return [_convert(item, (*path, index), numeric, brackets) for index, item in enumerate(element)]
    keys = list(element.keys())
    if len(keys) > MAX_WALKED_KEYS or len(set(keys)) != len(keys):
        raise _NotExact  # orjson keeps the last of duplicate keys, simdjson's lookup the first
    brackets[0] += sum(key.count("[") for key in keys)
    return {key: _convert(element[key], (*path, key), numeric, brackets) for key in keys}


def _brackets(value: Any) -> int:
    """The `[` a converted value was written with: one per list, and those in its strings and keys (an
    escaped one, `\\u005b`, is not in the text: the count then fails and orjson takes over)."""
    if isinstance(value, str):
        return value.count("[")
    if isinstance(value, list):
        return 1 + sum(_brackets(item) for item in value if isinstance(item, list | dict | str))
    if isinstance(value, dict):
        return sum(key.count("[") + _brackets(item) for key, item in value.items())
    return 0


def _numbers(array: Any) -> tuple[np.ndarray, int]:
    """The numbers of a nested array and how many arrays it holds; _NotExact when its levels are ragged, it
    holds anything but numbers, or integers a float64 cannot hold exactly."""
    shape, level, arrays = [], [array], 1
    while True:
        sizes = {len(item) for item in level}
        if len(sizes) != 1:
            raise _NotExact
        size = sizes.pop()
        shape.append(size)
        if size == 0 or not isinstance(level[0][0], simdjson.Array):
            break
        level = [child for item in level for child in item]
        if not all(isinstance(child, simdjson.Array) for child in level):
            raise _NotExact
        arrays += len(level)
    values = np.frombuffer(array.as_buffer(of_type="d"), dtype=np.float64)
    if values.size != math.prod(shape):
        raise _NotExact
    if values.size and float(np.abs(values).max()) >= EXACT_INTEGERS:
        raise _NotExact
    return values.reshape(shape), arrays
