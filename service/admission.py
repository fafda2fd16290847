"""Admission before the body is read: from a request's headers alone (its model, media type and declared
length), how many rows its body holds at least, and whether the graphs it will run could start them within
the queue wait budget (service.batching). A request they could not is refused with the same 503
`overloaded` and Retry-After that a parsed one gets, before its body is read: a refusal under overload then
costs the service almost nothing, where reading and parsing a 3 MB body cost milliseconds of the event loop
that the admitted requests were waiting for.

A request admitted this way holds its estimated rows in the graph's batcher while its body arrives, so the
requests whose bodies are on their way count ahead of later ones (a burst of large requests is not all
admitted at once because none of them has reached the queue yet). The parsed request is admitted again
with its exact rows when it joins the queue (Batcher.submit)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from fastapi import Request

from service import codecs
from service.batching import Held
from service.errors import ServiceError
from service.runtime import ModelRuntime

# The widest value a body may hold per number: 8 bytes (float64) in binary bodies; in text (JSON, CSV) a
# generous bound on a number with its separator ("-1.2345678901234567e-300, "), so the rows estimated from
# a text body's length are at most what it holds.
BINARY_VALUE_BYTES = 8
TEXT_VALUE_BYTES = 32
NPY_HEADER_BYTES = 128  # numpy writes headers of 128 bytes for any row shape served here


def rows_at_least(headers: Mapping[str, str], width: int, v2_header: str | None = None) -> int:
    """A lower bound on the rows of `width` values the body holds, from its headers; 0 when none comes.
    `v2_header`: the header that declares a V2 binary request's JSON part, whose length is not rows."""
    declared = headers.get("content-length")
    if declared is None:
        return 1 if "transfer-encoding" in headers else 0  # a chunked body: at least a row, unless refused
    if not (declared.isascii() and declared.isdigit()):
        return 0  # malformed: left to the body limit and the codecs to refuse
    size = int(declared)
    if size == 0:
        return 0
    media = codecs.media_type(headers.get("content-type"))
    if media == codecs.RAW:
        json_part = headers.get(v2_header, "") if v2_header else ""
        if json_part.isascii() and json_part.isdigit():
            return max(1, (size - int(json_part)) // (BINARY_VALUE_BYTES * width))
        kind = codecs.RAW_DTYPES.get(headers.get("x-dtype", "float32").strip().lower())
        return max(1, size // ((kind.itemsize if kind is not None else BINARY_VALUE_BYTES) * width))
    if media == codecs.NPY:
        return max(1, (size - NPY_HEADER_BYTES) // (BINARY_VALUE_BYTES * width))
    if media in (codecs.JSON, codecs.CSV):
        return max(1, size // (TEXT_VALUE_BYTES * width))
    return 1  # images (one per file, at least one) and media types the route will refuse


def admit_unread(
    request: Request,
    runtime: ModelRuntime,
    graphs: Sequence[str],
    width: int,
    max_rows: int,
    v2_header: str | None = None,
) -> Held | None:
    """Refuses the request with 503 `overloaded` before its body is read when the rows it holds could start
    within the budget on none of `graphs`; admitted for one graph, the rows it holds there (to release).

    The refusal goes out at once and the connection closes: a client that sent `Expect: 100-continue` never
    sends its body; one that is sending it anyway finds the 503 waiting when its upload is cut short (curl,
    httpx and wrk read it; Linux keeps it readable after the reset). Reading the body first, to keep the
    connection, cost as much of the event loop as the refusal saved: under the 64-connection overload of
    docs/benchmark.md, 48 answers a second against 194."""
    # No request may hold more than max_rows: a longer body (or a text one padded with spaces, which the
    # length overestimates) is refused by its reader as it arrives (413), not told to retry later.
    rows = min(rows_at_least(request.headers, width, v2_header), max_rows)
    if rows == 0:
        return None
    try:
        return runtime.admit(graphs, rows)
    except ServiceError as refused:
        refused.headers = {**(refused.headers or {}), "Connection": "close"}
        raise


@contextmanager
def room_for_body(request: Request, runtime: ModelRuntime, graph: str, width: int, max_rows: int) -> Iterator[None]:
    """admit_unread for a request that runs one graph; its rows are held there, ahead of later requests,
    while its body arrives, until they join the graph's queue or the block ends."""
    held = admit_unread(request, runtime, [graph], width, max_rows)
    if held is None:
        yield
        return
    with held:
        yield


def row_width(runtime: ModelRuntime, graph: str) -> int:
    """Values per row of the graph's input: the latent size for the decoder, else the features."""
    manifest = runtime.manifest
    return manifest.latent.dim if graph == "decoder" else math.prod(manifest.row_shape)
