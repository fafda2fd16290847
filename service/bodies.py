"""Request bodies read as they arrive, each format's limits checked on the way, so a body that breaks them
is refused after about as much of it as proves the excess, and no work or memory goes into the rest.

- JSON: `JsonScan` counts the structure outside strings chunk by chunk (service.jsonscan): commas (a lower
  bound on the values and fields the text holds), arrays, and nesting depth, against what the largest
  valid request could hold. A body within those bounds costs the parser at most what a valid one does.
- CSV: `CsvRows` parses complete lines as they arrive, with the row cap applied as rows come.
- .npy: the header is read from the first bytes, and the array's declared rows and size are checked
  before the rest is read.

Nothing here knows HTTP: chunks come from an async iterator (Starlette's request.stream())."""

from __future__ import annotations

import codecs as text_codecs
import csv
import io
import math
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from service import jsonscan
from service.codecs import MAX_NPY_HEADER, NpyHeader, batch_shape, few, npy_header
from service.errors import ServiceError

# Deeper than any valid request: a V2 header nests object > inputs > tensor > data > 8 dimensions.
MAX_DEPTH = 16
# Fields, options and parameters besides the numbers: every request has far fewer.
SLACK = 256


Feed = Callable[[bytes], None]


async def read(chunks: AsyncIterator[bytes], feed: Feed | None = None) -> bytes:
    """The whole body; `feed` sees each chunk first and raises to stop reading (see `cut_short`)."""
    parts = []
    async for chunk in chunks:
        if chunk:
            if feed is not None:
                with cut_short():
                    feed(chunk)
            parts.append(chunk)
    return b"".join(parts)


@contextmanager
def cut_short() -> Iterator[None]:
    """A refusal raised in the block leaves the rest of the body unread: it is answered at once, with
    `Connection: close`, so the server stops receiving (and discarding) what the client still sends.
    Clients that are still uploading read the answer (curl, httpx, wrk; see service.admission)."""
    try:
        yield
    except ServiceError as refused:
        refused.headers = {**(refused.headers or {}), "Connection": "close"}
        raise


@dataclass(frozen=True)
class JsonLimits:
    """What the largest valid JSON request holds: `values` numbers in at most `arrays` arrays."""

    values: int
    arrays: int
    depth: int = MAX_DEPTH

    @classmethod
    def for_rows(cls, row_shape: tuple[int, ...], max_rows: int, extra_per_row: int = 0) -> JsonLimits:
        """Limits of a request of up to `max_rows` rows of this shape, in any layout the routes take: nested
        ([n, 28, 28, 1]: 1 + 28 + 28 x 28 arrays a row), flat, or as {feature: value} objects, with
        `extra_per_row` values besides the features (a label)."""
        arrays_per_row = 1 + sum(math.prod(row_shape[:end]) for end in range(1, len(row_shape)))
        values = max_rows * (math.prod(row_shape) + extra_per_row) + SLACK
        return cls(values=values, arrays=max_rows * arrays_per_row + SLACK)


SMALL_JSON = JsonLimits(values=SLACK, arrays=SLACK)  # a request without rows (generate)


class JsonScan:
    """Feeds on a JSON text chunk by chunk (service.jsonscan counts its structure) and raises once it holds
    more than `limits` allow."""

    def __init__(self, limits: JsonLimits) -> None:
        self.limits = limits
        self.structure = jsonscan.Structure()

    def __call__(self, chunk: bytes) -> None:
        self.structure.feed(chunk)
        structure, limits = self.structure, self.limits
        if structure.deepest > limits.depth:
            raise ServiceError(400, "too_deep", f"the JSON body nests deeper than {limits.depth} levels")
        if structure.commas >= limits.values + limits.arrays or structure.arrays > limits.arrays:
            raise ServiceError(
                413,
                "too_many_values",
                f"the JSON body holds more values or arrays than the largest valid request ({limits.values} "
                f"numbers in {limits.arrays} arrays): send fewer rows",
            )


class CsvRows:
    """Feeds on CSV text chunk by chunk, parsing each complete line as it comes: numbers only, or a first
    line of the model's feature names in any order, and the model's label column if it has one (its cells
    are kept as text, apart from the rows). Raises at the first bad line, at row `max_rows + 1`, and at a
    line longer than any row of the model could be."""

    def __init__(
        self, names: Sequence[str] | None, features: int, max_rows: int, field: str, label: str | None = None
    ) -> None:
        self.names, self.features, self.max_rows, self.field, self.label = names, features, max_rows, field, label
        self.max_line_chars = 256 * (features + (label is not None)) + 4096
        self.max_lines = 2 * max_rows + 64  # blank lines are skipped, but not without end
        self._decoder = text_codecs.getincrementaldecoder("utf-8-sig")()
        self._pending = ""
        self._rows: list[list[float]] = []
        self._order: list[int] | None = None
        self._label_at: int | None = None  # the label column's place in the header, when it names one
        self._labels: list[str] = []
        self._width = features  # cells per line: the header's, when there is one
        self._first = True
        self._lines = 0

    def __call__(self, chunk: bytes) -> None:
        self._take(self._decode(chunk, final=False), final=False)

    def rows(self) -> np.ndarray:
        """The rows, once the whole body was fed."""
        self._take(self._decode(b"", final=True), final=True)
        if not self._rows:
            raise ServiceError(422, "empty_batch", "the CSV body has no rows: send at least one")
        return np.asarray(self._rows, dtype=np.float64).reshape(len(self._rows), self.features)

    def labels(self) -> list[str] | None:
        """The label column's cells, one per row (once the rows were read); None when the header had none."""
        return self._labels if self._label_at is not None else None

    def _decode(self, chunk: bytes, final: bool) -> str:
        try:
            return self._decoder.decode(chunk, final)
        except UnicodeDecodeError:
            raise ServiceError(400, "malformed_csv", "the CSV body is not UTF-8 text") from None

    def _take(self, text: str, final: bool) -> None:
        text = self._pending + text
        end = len(text) if final else text.rfind("\n") + 1
        # A quoted cell may hold a line break: only text with its quotes closed is complete.
        if not final and text.count('"', 0, end) % 2:
            end = 0
        self._pending = text[end:]
        if len(self._pending) > self.max_line_chars:
            raise ServiceError(
                422, "invalid_shape", f"a CSV line is longer than {self.max_line_chars} characters: not a row"
            )
        if end:
            self._lines += text.count("\n", 0, end)
            if self._lines > self.max_lines:
                raise ServiceError(413, "too_many_rows", f"the CSV body has more than {self.max_lines} lines")
            self._parse(text[:end])

    def _parse(self, text: str) -> None:
        try:
            # newline="" as the csv module asks: a lone \r inside a line is then a line break, not an error.
            for line in csv.reader(io.StringIO(text, newline="")):
                if line and any(cell.strip() for cell in line):
                    self._row(line)
        except csv.Error as error:
            raise ServiceError(400, "malformed_csv", f"the CSV body cannot be read: {error}") from None

    def _row(self, line: list[str]) -> None:
        if self._first:
            self._first = False
            header = [cell.strip() for cell in line]
            if not any(_is_number(cell) for cell in header):  # a header: names only
                self._order = _csv_columns(header, self.names, self.label)
                self._label_at = header.index(self.label) if self.label in header else None
                self._width = len(header)
                return
        index = len(self._rows) + (1 if self._order is None else 2)
        if len(line) != self._width:
            takes = f"the header has {self._width} columns"
            if self._width == self.features:
                takes = f"the model takes {self.features}"
            raise ServiceError(422, "invalid_shape", f"CSV line {index} has {len(line)} values; {takes}")
        cells = line if self._order is None else [line[i] for i in self._order]
        if not all(_is_number(cell) for cell in cells):
            raise ServiceError(422, "invalid_dtype", f"CSV line {index} holds a value that is not a number")
        if len(self._rows) == self.max_rows:
            raise ServiceError(
                413, "too_many_rows", f"{self.field} has more than {self.max_rows} rows; at most {self.max_rows}"
            )
        self._rows.append([float(cell) for cell in cells])
        if self._label_at is not None:
            self._labels.append(line[self._label_at].strip())


class ByteLimit:
    """Feeds on a raw body and raises once it outgrows what its X-Shape and X-Dtype declare."""

    def __init__(self, needed: int, dims: tuple[int, ...], dtype: np.dtype) -> None:
        self.needed, self.dims, self.dtype = needed, dims, dtype
        self._received = 0

    def __call__(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._received > self.needed:
            raise ServiceError(
                422,
                "invalid_length",
                f"the body has more than {self.needed} bytes; X-Shape {list(self.dims)} of {self.dtype.name} "
                f"needs {self.needed}",
            )


class NpyRows:
    """Feeds on a .npy file and raises as soon as its header is read when the array it declares holds more
    rows than `max_rows`, or when the bytes declared (Content-Length) or received are not what it says."""

    def __init__(self, row_shape: tuple[int, ...], max_rows: int, field: str, declared: int | None) -> None:
        self.row_shape, self.max_rows, self.field, self.declared = row_shape, max_rows, field, declared
        self._head = b""
        self._header: NpyHeader | None = None
        self._received = 0

    def __call__(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._header is None:
            self._head += chunk[: MAX_NPY_HEADER - len(self._head)]
            self._header = npy_header(self._head)
            if self._header is None:
                return
            self._check(self._header)
        if self._received > self._header.offset + self._header.nbytes:
            self._mismatch(self._header, self._received)

    def _check(self, header: NpyHeader) -> None:
        if self.declared is not None and self.declared != header.offset + header.nbytes:
            self._mismatch(header, self.declared)
        batch = batch_shape(header.shape, self.row_shape)
        if batch is not None and batch[0] > self.max_rows:
            raise ServiceError(
                413, "too_many_rows", f"{self.field} has {batch[0]} rows; at most {self.max_rows} per request"
            )

    @staticmethod
    def _mismatch(header: NpyHeader, size: int) -> None:
        raise ServiceError(
            400,
            "malformed_npy",
            f"the body is not a readable .npy file: its header says shape {list(header.shape)} ({header.nbytes} "
            f"bytes) but {size - header.offset} bytes follow",
        )


def _csv_columns(header: list[str], names: Sequence[str] | None, label: str | None) -> list[int]:
    """Where each feature is in the header, which names each feature once and may name the label column."""
    if names is None:
        raise ServiceError(422, "invalid_request", "this model has no feature names: send CSV rows without a header")
    allowed = {*names, label} if label is not None else set(names)
    missing, unknown = sorted(set(names) - set(header)), sorted(set(header) - allowed)
    repeated = sorted(name for name, count in Counter(header).items() if count > 1)
    if missing or unknown or repeated:
        raise ServiceError(
            422,
            "invalid_request",
            f"the CSV header must name each feature once: missing {few(missing)}, unknown {few(unknown)}"
            + (f", repeated {few(repeated)}" if repeated else ""),
        )
    return [header.index(name) for name in names]


def _is_number(cell: str) -> bool:
    # float() also reads "1_0" and non-ASCII digits, which JSON bodies cannot hold: CSV cells neither.
    if not cell.isascii() or "_" in cell:
        return False
    try:
        float(cell)
    except ValueError:
        return False
    return True
