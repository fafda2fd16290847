"""Datasets as streams of Arrow tables of at most `batch_rows` rows, each with the file and row it starts at.

A dataset is a file or a folder (searched recursively; names starting with "." or "_" are skipped, as
Arrow's and Spark's own markers are) of one kind: Parquet, CSV, .npy, .npz or images. Paths are local or
any URL pyarrow's filesystems open. Nothing is read whole: Parquet by row group, CSV by block, arrays by
rows, images by `batch_rows` files."""

from __future__ import annotations

import posixpath
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from service.batch.core import IMAGE_BYTES, IMAGE_PATH, TENSOR
from service.batch.errors import BatchError

Kind = Literal["parquet", "csv", "npy", "npz", "images"]
KINDS: dict[str, Kind] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".npy": "npy",
    ".npz": "npz",
    ".png": "images",
    ".jpg": "images",
    ".jpeg": "images",
    ".bmp": "images",
}
CSV_BLOCK_BYTES = 4 * 1024 * 1024
PARQUET_READ_ROWS = 16_384


@dataclass(frozen=True)
class Chunk:
    table: pa.Table
    file: str
    first_row: int  # the row of `file` the table starts at, from 0


@dataclass(frozen=True)
class Dataset:
    """The files of a dataset, all of one kind, on one filesystem."""

    filesystem: pafs.FileSystem
    root: str
    files: tuple[str, ...]
    kind: Kind

    @property
    def uris(self) -> list[str]:
        """The files as Ray's readers take them with `filesystem`."""
        return list(self.files)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of a local path or a URL (s3://, gs://, hdfs://, file://)."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).absolute())
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise BatchError(f"{uri}: pyarrow cannot open this URL ({exc})") from None


def find(uri: str) -> Dataset:
    filesystem, root = resolve(uri)
    info = filesystem.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise BatchError(f"{uri} does not exist")
    if info.type == pafs.FileType.File:
        listed = [info]
    else:
        listed = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    files = sorted(f.path for f in listed if f.type == pafs.FileType.File and not _hidden(f.path, root))
    kinds = {path: KINDS.get(posixpath.splitext(path)[1].lower()) for path in files}
    unknown = [path for path, kind in kinds.items() if kind is None]
    if unknown:
        raise BatchError(f"{unknown[0]}: not a dataset file (one of {', '.join(sorted(KINDS))})")
    found = sorted({kind for kind in kinds.values() if kind is not None})
    if not files:
        raise BatchError(f"{uri} holds no files")
    if len(found) > 1:
        raise BatchError(f"{uri} mixes {' and '.join(found)} files; a dataset is of one kind")
    return Dataset(filesystem, root, tuple(files), found[0])


def _hidden(path: str, root: str) -> bool:
    relative = posixpath.relpath(path, root) if path != root else posixpath.basename(path)
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def total_rows(dataset: Dataset, array: str | None) -> int | None:
    """The dataset's rows when its files say so cheaply (Parquet footers, array headers, a file count);
    None for CSV."""
    if dataset.kind == "parquet":
        return sum(_parquet(dataset, path).metadata.num_rows for path in dataset.files)
    if dataset.kind == "images":
        return len(dataset.files)
    if dataset.kind in ("npy", "npz"):
        total = 0
        for path in dataset.files:
            with _ArrayStream(dataset, path, array) as (_, shape, _):
                total += shape[0] if shape else 1
        return total
    return None


def schema(dataset: Dataset, csv_types: dict[str, pa.DataType]) -> pa.Schema:
    """The columns of the dataset's first file (Parquet and CSV)."""
    path = dataset.files[0]
    if dataset.kind == "parquet":
        return _parquet(dataset, path).schema_arrow
    with dataset.filesystem.open_input_stream(path) as stream:
        return _csv_reader(stream, path, csv_types).schema


def chunks(
    dataset: Dataset, batch_rows: int, columns: list[str] | None, csv_types: dict[str, pa.DataType], array: str | None
) -> Iterator[Chunk]:
    for path in dataset.files:
        if dataset.kind == "parquet":
            yield from _parquet_chunks(dataset, path, batch_rows, columns)
        elif dataset.kind == "csv":
            yield from _csv_chunks(dataset, path, batch_rows, columns, csv_types)
        elif dataset.kind in ("npy", "npz"):
            yield from _array_chunks(dataset, path, batch_rows, array)
    if dataset.kind == "images":
        yield from _image_chunks(dataset, batch_rows)


def _parquet(dataset: Dataset, path: str) -> pq.ParquetFile:
    try:
        # pre_buffer (pyarrow's default) kept column chunks it had read: memory grew with some files.
        stream = dataset.filesystem.open_input_file(path)
        return pq.ParquetFile(stream, pre_buffer=False)
    except (pa.ArrowException, OSError) as exc:
        raise BatchError(f"{path}: not a readable Parquet file ({exc})") from None


def _parquet_chunks(dataset: Dataset, path: str, batch_rows: int, columns: list[str] | None) -> Iterator[Chunk]:
    parquet = _parquet(dataset, path)
    _check_columns(path, parquet.schema_arrow.names, columns)
    row = 0
    try:
        # Decoded in batches of a few runs (each batch costs per column: 4,096 rows at a time cost a third more),
        # then sliced into runs.
        for batch in parquet.iter_batches(batch_size=max(batch_rows, PARQUET_READ_ROWS), columns=columns):
            table = pa.Table.from_batches([batch])
            for start in range(0, table.num_rows, batch_rows):
                yield Chunk(table.slice(start, batch_rows), path, row + start)
            row += table.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise BatchError(f"{path}, after row {row}: unreadable Parquet ({exc})") from None


def _csv_reader(stream: IO[bytes], path: str, types: dict[str, pa.DataType]) -> pacsv.CSVStreamingReader:
    try:
        return pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
            convert_options=pacsv.ConvertOptions(column_types=types),
        )
    except (pa.ArrowException, OSError) as exc:
        raise BatchError(f"{path}: not a readable CSV file ({exc})") from None


def _csv_chunks(
    dataset: Dataset, path: str, batch_rows: int, columns: list[str] | None, types: dict[str, pa.DataType]
) -> Iterator[Chunk]:
    row = 0
    with dataset.filesystem.open_input_stream(path) as stream:
        reader = _csv_reader(stream, path, types)
        _check_columns(path, reader.schema.names, columns)
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowInvalid as exc:
                raise _csv_error(dataset, path, row, types, reader.schema, exc) from None
            table = pa.Table.from_batches([batch])
            table = table.select(columns) if columns is not None else table
            for start in range(0, table.num_rows, batch_rows):
                yield Chunk(table.slice(start, batch_rows), path, row + start)
            row += table.num_rows


def _csv_error(
    dataset: Dataset, path: str, row: int, types: dict[str, pa.DataType], found: pa.Schema, exc: Exception
) -> BatchError:
    """Arrow's CSV errors do not say which row; for a value that is not a number, the file is read again
    as text to find it."""
    numeric = [f.name for f in found if pa.types.is_floating(f.type) or pa.types.is_integer(f.type)]
    as_text = {name: pa.string() for name in numeric}
    with dataset.filesystem.open_input_stream(path) as stream:
        at = 0
        try:
            for batch in pacsv.open_csv(stream, convert_options=pacsv.ConvertOptions(column_types=as_text)):
                for name in numeric:
                    for i, value in enumerate(batch.column(name).to_pylist()):
                        if value is not None and not _number(value):
                            return BatchError(f"{path}, row {at + i}: column {name!r} holds {value!r}, not a number")
                at += batch.num_rows
        except pa.ArrowInvalid:
            pass
    return BatchError(f"{path}, after row {row}: {exc}")


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text == ""  # an empty field is a missing value (null), refused as such by the core
    return True


def _check_columns(path: str, names: list[str], columns: list[str] | None) -> None:
    missing = [name for name in columns or [] if name not in names]
    if missing:
        raise BatchError(f"{path}: no column {', '.join(map(repr, missing))} (it has {', '.join(names[:20])})")


def _array_chunks(dataset: Dataset, path: str, batch_rows: int, array: str | None) -> Iterator[Chunk]:
    with _ArrayStream(dataset, path, array) as (stream, shape, dtype):
        rows = shape[0] if shape else 1
        row_values = int(np.prod(shape[1:], dtype=np.int64))
        for start in range(0, rows, batch_rows):
            n = min(batch_rows, rows - start)
            data = stream.read(n * row_values * dtype.itemsize)
            if len(data) != n * row_values * dtype.itemsize:
                raise BatchError(f"{path}, row {start}: the file ends before its header's {rows} rows")
            values = np.frombuffer(data, dtype=dtype)
            if values.dtype.kind not in "iuf":
                raise BatchError(f"{path}: holds {dtype}, not numbers")
            flat = pa.array(values.astype(np.float32, copy=False))
            yield Chunk(pa.table({TENSOR: pa.FixedSizeListArray.from_arrays(flat, row_values)}), path, start)


class _ArrayStream:
    """An .npy file, or one array of an .npz, opened at its first value: (stream, shape, dtype)."""

    def __init__(self, dataset: Dataset, path: str, array: str | None) -> None:
        self.dataset, self.path, self.array = dataset, path, array
        self._closing: list[IO[bytes]] = []

    def __enter__(self) -> tuple[IO[bytes], tuple[int, ...], np.dtype]:
        stream: IO[bytes] = self.dataset.filesystem.open_input_file(self.path)
        self._closing.append(stream)
        if self.dataset.kind == "npz":
            stream = self._member(stream)
        try:
            version = np.lib.format.read_magic(stream)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(stream)
        except ValueError as exc:
            raise BatchError(f"{self.path}: not a readable .npy array ({exc})") from None
        if fortran and len(shape) > 1:
            raise BatchError(f"{self.path}: a Fortran-ordered array; save it in C order (np.ascontiguousarray)")
        return stream, shape, dtype

    def _member(self, stream: IO[bytes]) -> IO[bytes]:
        try:
            archive = zipfile.ZipFile(stream)
        except zipfile.BadZipFile:
            raise BatchError(f"{self.path}: not a readable .npz archive") from None
        names = [name.removesuffix(".npy") for name in archive.namelist()]
        chosen = self.array or ("X" if "X" in names else names[0] if len(names) == 1 else None)
        if chosen not in names:
            raise BatchError(f"{self.path}: choose the array with --array (it holds {', '.join(names)})")
        member = archive.open(f"{chosen}.npy")
        self._closing.append(member)
        return member

    def __exit__(self, *_: object) -> None:
        for stream in reversed(self._closing):
            stream.close()


def _image_chunks(dataset: Dataset, batch_rows: int) -> Iterator[Chunk]:
    for start in range(0, len(dataset.files), batch_rows):
        paths = list(dataset.files[start : start + batch_rows])
        blobs = []
        for path in paths:
            with dataset.filesystem.open_input_stream(path) as stream:
                blobs.append(stream.read())
        table = pa.table({IMAGE_BYTES: pa.array(blobs, type=pa.binary()), IMAGE_PATH: pa.array(paths)})
        yield Chunk(table, dataset.root, start)
