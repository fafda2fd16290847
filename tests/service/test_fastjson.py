"""service.fastjson gives exactly what orjson plus np.asarray give, or declines."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import codecs, fastjson
from service.errors import ServiceError

rows: tuple[fastjson.Pattern, ...] = (("inputs",),)


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 8, 8), (4, 28, 28, 1), (2, 0)])
def test_well_formed_rows_match_orjson_exactly(shape: tuple[int, ...]) -> None:
    values = np.random.default_rng(0).normal(size=shape) * 1000
    body = orjson.dumps({"inputs": values.tolist(), "return_sq_err": True, "note": "a [bracket] in a string"})

    fast = fastjson.loads(body, rows)

    expected = orjson.loads(body)
    assert fast is not None
    assert {k: v for k, v in fast.items() if k != "inputs"} == {k: v for k, v in expected.items() if k != "inputs"}
    np.testing.assert_array_equal(fast["inputs"], np.asarray(expected["inputs"], dtype=np.float64))
    assert fast["inputs"].shape == np.asarray(expected["inputs"]).shape


@pytest.mark.parametrize(
    "body",
    [
        b'{"inputs": [[1, 2, 3], [4, 5]]}',  # ragged
        b'{"inputs": [[1, 2], [3, [4]]]}',  # deeper at one leaf
        b'{"inputs": [[[], [1, 2]]]}',  # an empty array that a flat count would not notice
        b'{"inputs": [[1, 2], 3]}',  # mixed depth
        b'{"inputs": ["1", 2]}',  # a string
        b'{"inputs": [true, 1]}',  # a boolean
        b'{"inputs": [[1e400]]}',  # beyond float64
        b'{"inputs": [[1]], "inputs": [[2]]}',  # duplicate keys: orjson keeps the last
        b'{"inputs": [[1]], "key\\u005b": 1}',  # an escaped bracket: the count cannot prove anything
        b'{"inputs": [[1, 2]]} trailing',
        b'{"inputs": [[1, 123456789012345678901234567890]]}',  # beyond 64 bits (simdjson: RuntimeError)
        b'{"a\\u0000b": [], "inputs": [[1]]}',  # a key simdjson cannot look up (found by schemathesis)
        b'{"\\ud800": 1, "inputs": [[1]]}',  # a lone surrogate
        b"[1, 2]",
    ],
)
def test_anything_else_is_declined(body: bytes) -> None:
    result = fastjson.loads(body, rows)
    assert result is None or not isinstance(result, dict)


def test_other_arrays_stay_lists() -> None:
    fast = fastjson.loads(b'{"inputs": [[1, 2]], "shape": [1, [2]]}', rows)
    assert fast is not None and fast["shape"] == [1, [2]]


@pytest.mark.parametrize(
    "body",
    [
        b'{"\\udabd\\ude5c\\u00c9": 1, "inputs": [[1]]}',
        b'{"x\\"y": [1], "inputs": [[1, 2]]}',
        b'{"inputs": [[-0.0, 1e-300]]}',
    ],
)
def test_escapes_in_other_fields_match_orjson(body: bytes) -> None:
    fast, expected = fastjson.loads(body, rows), orjson.loads(body)
    assert fast is not None
    assert {k: v for k, v in fast.items() if k != "inputs"} == {k: v for k, v in expected.items() if k != "inputs"}
    np.testing.assert_array_equal(fast["inputs"], expected["inputs"])


# --- differential: the fast path against orjson + numpy, over generated documents -------------------------

numbers = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
)
leaves = st.one_of(numbers, st.booleans(), st.none(), st.text(max_size=3))


def nested(shape: tuple[int, ...]) -> st.SearchStrategy[Any]:
    """Rectangular nested lists of this shape, whose leaves are mostly numbers."""
    if not shape:
        return st.one_of(numbers, numbers, numbers, leaves)
    return st.lists(nested(shape[1:]), min_size=shape[0], max_size=shape[0])


rows_values = st.one_of(
    st.lists(st.integers(0, 4), min_size=1, max_size=3).flatmap(lambda shape: nested(tuple(shape))),
    st.recursive(leaves, lambda inner: st.lists(inner, max_size=4), max_leaves=12),  # ragged, mixed
)
json_values = st.recursive(
    leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
)
documents = st.fixed_dictionaries(
    {"inputs": rows_values},
    optional={
        "return_sq_err": st.booleans() | json_values,
        "top_features": st.integers(-(2**63), 2**63 - 1) | json_values,
    },
)


def outcome(parse: Any, body: bytes) -> Any:
    """The rows and options (or a refusal as status, code, message) that the service's JSON reading gives
    for `body`: options first, then rows (service.payloads)."""
    try:
        document = parse(body)
        options = {name: codecs.option(document, name, kind, default) for name, (kind, default) in OPTIONS.items()}
        array = codecs.as_batch(document["inputs"], (3,), "inputs", 1024)
    except ServiceError as error:
        return (error.status, error.code, error.message)
    return array.tobytes(), array.shape, options


def the_slow_way(body: bytes) -> Any:
    document = codecs.load_json(body)
    codecs.check_fields(document, ["inputs"], list(OPTIONS))
    return document


OPTIONS = {"return_sq_err": (bool, False), "top_features": (int, 0)}


@settings(max_examples=300, deadline=None)
@given(documents)
def test_the_fast_path_answers_as_orjson_and_numpy_do(document: dict[str, Any]) -> None:
    body = orjson.dumps(document)
    fast = outcome(lambda raw: codecs.load_json_with_rows(raw, "inputs", OPTIONS), body)
    assert fast == outcome(the_slow_way, body)
