"""The results folder: parts written as the job goes, under a temporary name beside the final one, with
_manifest.json (what was written) last; renamed into place only once complete, so a failed or interrupted
job leaves no half-written output (the temporary folder is removed)."""

from __future__ import annotations

import posixpath
import time
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from service.batch.errors import BatchError
from service.batch.sources import resolve

MANIFEST = "_manifest.json"
Format = Literal["parquet", "csv"]


@dataclass
class Part:
    file: str
    rows: int


@dataclass
class Written:
    """What the job wrote, for its manifest and summary."""

    parts: list[Part] = field(default_factory=list)
    rows: int = 0
    anomalies: int | None = None  # counted when is_anomaly is an output


class Sink:
    """`write(table)` appends to the current part (a new one every `part_rows` rows); `commit(about)` writes
    the manifest and renames the folder into place. Leaving the `with` block by an exception removes it."""

    def __init__(self, uri: str, format: Format, part_rows: int, overwrite: bool) -> None:
        self.uri, self.format, self.part_rows, self.overwrite = uri, format, part_rows, overwrite
        self.filesystem, self.final = resolve(uri)
        found = self.filesystem.get_file_info(self.final).type
        if found != pafs.FileType.NotFound and not overwrite:
            raise BatchError(f"{uri} exists; choose another --output or pass --overwrite")
        # --overwrite replaces an earlier job's output only, never a folder of anything else (the input's).
        earlier = posixpath.join(self.final, MANIFEST)
        if found != pafs.FileType.NotFound and self.filesystem.get_file_info(earlier).type != pafs.FileType.File:
            raise BatchError(
                f"{uri} exists and is not the output of an earlier job (no {MANIFEST}); --overwrite replaces "
                "only those: choose another --output"
            )
        self.folder = f"{self.final}.tmp-{uuid.uuid4().hex[:8]}"
        self.written = Written()
        self._writer: pq.ParquetWriter | pacsv.CSVWriter | None = None
        self._stream: Any = None
        self._schema: pa.Schema | None = None

    def __enter__(self) -> Sink:
        try:
            self.filesystem.create_dir(self.folder, recursive=True)
        except OSError as exc:
            raise BatchError(f"{self.uri}: cannot create the output folder ({exc})") from None
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is not None:
            self._close_part()
            self.filesystem.delete_dir(self.folder)

    def write(self, table: pa.Table) -> None:
        if self._schema is None:
            self._schema = table.schema
        elif table.schema != self._schema:
            table = _cast(table, self._schema)
        if self._writer is None or self.written.parts[-1].rows >= self.part_rows:
            self._open_part()
        assert self._writer is not None
        self._writer.write_table(table)
        self.written.parts[-1].rows += table.num_rows
        self.written.rows += table.num_rows
        if "is_anomaly" in table.column_names:
            self.written.anomalies = (self.written.anomalies or 0) + _count(table.column("is_anomaly"))

    def adopt(self) -> None:
        """Counts the parts another writer (Ray) put into the folder."""
        listed = self.filesystem.get_file_info(pafs.FileSelector(self.folder, recursive=True))
        for info in sorted((f for f in listed if f.type == pafs.FileType.File), key=lambda f: f.path):
            table = self._read_part(info.path)
            relative = posixpath.relpath(info.path, self.folder)
            self.written.parts.append(Part(relative, table.num_rows))
            self.written.rows += table.num_rows
            if "is_anomaly" in table.column_names:
                self.written.anomalies = (self.written.anomalies or 0) + _count(table.column("is_anomaly"))

    def _read_part(self, path: str) -> pa.Table:
        # Only the row count and is_anomaly are needed: Parquet reads one column, CSV streams through.
        if self.format == "parquet":
            with self.filesystem.open_input_file(path) as stream:
                parquet = pq.ParquetFile(stream)
                wanted = [name for name in parquet.schema_arrow.names if name == "is_anomaly"]
                return parquet.read(columns=wanted) if wanted else pa.table({"n": pa.nulls(parquet.metadata.num_rows)})
        with self.filesystem.open_input_stream(path) as stream:
            return pacsv.read_csv(stream)

    def commit(self, about: dict[str, Any]) -> None:
        self._close_part()
        manifest = {
            **about,
            "format": self.format,
            "rows": self.written.rows,
            "anomalies": self.written.anomalies,
            "parts": [{"file": part.file, "rows": part.rows} for part in self.written.parts],
            "schema": [{"name": f.name, "type": str(f.type)} for f in self._schema or []],
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        written = orjson.dumps(manifest, option=orjson.OPT_INDENT_2)
        with self.filesystem.open_output_stream(posixpath.join(self.folder, MANIFEST)) as stream:
            stream.write(written)
        self._move_into_place(written)

    def _move_into_place(self, manifest: bytes) -> None:
        # An existing folder is moved aside first and removed only once the new one is in place.
        aside = None
        if self.filesystem.get_file_info(self.final).type != pafs.FileType.NotFound:
            aside = f"{self.final}.old-{uuid.uuid4().hex[:8]}"
            self.filesystem.move(self.final, aside)
        try:
            self.filesystem.move(self.folder, self.final)
        except (pa.ArrowNotImplementedError, NotImplementedError, OSError):
            self._move_parts(manifest)
        if aside is not None:
            self.filesystem.delete_dir(aside)

    def _move_parts(self, manifest: bytes) -> None:
        """Object stores cannot rename a folder: the parts are moved one by one and the manifest is written
        last, so a folder without _manifest.json is one still being written (or abandoned)."""
        for part in self.written.parts:
            target = posixpath.join(self.final, part.file)
            self.filesystem.create_dir(posixpath.dirname(target), recursive=True)
            self.filesystem.move(posixpath.join(self.folder, part.file), target)
        with self.filesystem.open_output_stream(posixpath.join(self.final, MANIFEST)) as stream:
            stream.write(manifest)
        self.filesystem.delete_dir(self.folder)

    def _open_part(self) -> None:
        self._close_part()
        name = f"part-{len(self.written.parts):05d}.{self.format}"
        self._stream = self.filesystem.open_output_stream(posixpath.join(self.folder, name))
        assert self._schema is not None
        if self.format == "parquet":
            self._writer = pq.ParquetWriter(self._stream, self._schema)
        else:
            self._writer = pacsv.CSVWriter(self._stream, self._schema)
        self.written.parts.append(Part(name, 0))

    def _close_part(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._stream.close()
            self._writer, self._stream = None, None


def _count(column: pa.ChunkedArray) -> int:
    return int(column.to_numpy(zero_copy_only=False).sum())


def _cast(table: pa.Table, schema: pa.Schema) -> pa.Table:
    # Passthrough columns can differ in type between files (int32 in one, int64 in another).
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise BatchError(f"the files' columns differ in type, results cannot share one schema: {exc}") from None
