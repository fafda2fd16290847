"""service.fastjson gives exactly what orjson plus np.asarray give, or declines."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from service import fastjson


def rows(path: fastjson.Path) -> bool:
    return path == ("inputs",)


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
