"""JSON to numpy and back, option checks, content negotiation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import codecs
from service.errors import ServiceError


def test_rows_and_a_single_row() -> None:
    batch = codecs.as_batch([[1, 2], [3, 4]], (2,), "inputs", 10)
    single = codecs.as_batch([1.5, 2], (2,), "inputs", 10)
    assert batch.dtype == np.float32 and batch.shape == (2, 2)
    np.testing.assert_array_equal(single, [[1.5, 2.0]])


def test_image_rows() -> None:
    image = np.arange(12).reshape(3, 4).tolist()
    assert codecs.as_batch(image, (3, 4), "inputs", 10).shape == (1, 3, 4)
    assert codecs.as_batch([image, image], (3, 4), "inputs", 10).shape == (2, 3, 4)
    with pytest.raises(ServiceError, match=r"shape \[3\]; expected one row of shape \[3, 4\]"):
        codecs.as_batch(image[0][:3], (3, 4), "inputs", 10)


def test_nan_and_infinity_are_parsed_to_be_refused() -> None:
    body = codecs.load_json(b'{"inputs": [NaN, Infinity]}')
    with pytest.raises(ServiceError) as caught:
        codecs.as_batch(body["inputs"], (2,), "inputs", 10)
    assert (caught.value.status, caught.value.code) == (422, "non_finite")


@pytest.mark.parametrize(
    ("header", "media"),
    [(None, "application/json"), ("", "application/json"), ("Application/JSON; charset=utf-8", "application/json")],
)
def test_media_type(header: str | None, media: str) -> None:
    assert codecs.media_type(header) == media


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, "application/json"),
        ("*/*", "application/json"),
        ("image/png", "image/png"),
        ("image/*", "image/png"),
        ("image/png, application/json", "application/json"),  # equal q: the first offered
        ("image/png, application/json;q=0.5", "image/png"),
        ("text/html,application/xhtml+xml,*/*;q=0.8", "application/json"),
        ("image/png;q=0, */*", "application/json"),
        ("text/csv", None),
    ],
)
def test_negotiate(accept: str | None, chosen: str | None) -> None:
    assert codecs.negotiate(accept, ["application/json", "image/png"]) == chosen


def test_dump_json_writes_numpy_arrays() -> None:
    payload = {"scores": np.array([0.5, 0.25], dtype=np.float32), "is_anomaly": np.array([True, False])}
    assert codecs.dump_json(payload) == b'{"scores":[0.5,0.25],"is_anomaly":[true,false]}'


def test_options_are_typed_exactly() -> None:
    assert codecs.option({"n": 3}, "n", int, None) == 3
    assert codecs.option({}, "flag", bool, False) is False
    with pytest.raises(ServiceError, match="flag must be true or false, got 1"):
        codecs.option({"flag": 1}, "flag", bool, False)
    with pytest.raises(ServiceError, match="n must be an integer, got True"):
        codecs.option({"n": True}, "n", int, None)


JSON_SCALARS = st.one_of(st.integers(-(2**63), 2**64 - 1), st.floats(), st.booleans(), st.none(), st.text(max_size=2))


def rows_of(width: int) -> st.SearchStrategy[list[list[Any]]]:
    row = st.lists(JSON_SCALARS, min_size=width, max_size=width)
    return st.lists(row, min_size=codecs.ROW_BY_ROW, max_size=codecs.ROW_BY_ROW + 8)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 3).flatmap(rows_of) | st.lists(st.lists(JSON_SCALARS), min_size=codecs.ROW_BY_ROW))
def test_row_by_row_conversion_has_the_shape_and_kind_of_np_asarray(rows: list[list[Any]]) -> None:
    try:
        whole = np.asarray(rows)
    except (ValueError, OverflowError):
        with pytest.raises((ValueError, OverflowError)):
            codecs.as_array(rows)
        return
    by_row = codecs.as_array(rows)
    assert (by_row.shape, by_row.dtype.kind) == (whole.shape, whole.dtype.kind)
    if whole.dtype.kind in "biuf":
        np.testing.assert_array_equal(by_row, whole)
