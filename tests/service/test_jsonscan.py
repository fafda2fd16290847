"""service.jsonscan counts a JSON text's structure outside strings exactly, however the text is cut into
chunks: checked against a character-by-character count over generated documents."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from service import jsonscan

FEW_QUOTES = jsonscan._FEW_QUOTES

values = st.recursive(
    st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(), st.text(alphabet='ab,[]{}"\\ ')),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(alphabet='k,["\\'), inner, max_size=4),
    max_leaves=40,
)


def reference(text: str) -> tuple[int, int, int]:
    """Commas, arrays and the deepest nesting outside strings, one character at a time."""
    commas = arrays = depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
            continue
        if char == '"':
            in_string = True
        elif char == ",":
            commas += 1
        elif char in "[{":
            arrays += char == "["
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return commas, arrays, deepest


@settings(max_examples=300, deadline=None)
@given(values, st.lists(st.integers(1, 64), max_size=8), st.sampled_from([0, 2, jsonscan._FEW_QUOTES]))
def test_the_counts_do_not_depend_on_where_the_chunks_are_cut(document: Any, cuts: list[int], few: int) -> None:
    """With chunks split at their quotes (few quotes) and followed character by character (more)."""
    jsonscan._FEW_QUOTES = few
    try:
        text = json.dumps(document, ensure_ascii=False).encode()
        structure, start = jsonscan.Structure(), 0
        for size in cuts:
            structure.feed(text[start : start + size])
            start += size
        structure.feed(text[start:])
    finally:
        jsonscan._FEW_QUOTES = FEW_QUOTES
    assert (structure.commas, structure.arrays, structure.deepest) == reference(text.decode())
