"""Loading training data from IDX, .npz, .npy, .csv and .parquet files, and folders of images, into one
`Dataset` shape.

Every failure a user can cause (missing file, empty table, text in a feature column, NaN, ragged rows,
unknown label) is a `DataError` whose message names the file and, where there is one, the column.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from training.errors import DataError

InputKind = Literal["image", "tabular"]


@dataclass
class Dataset:
    x: np.ndarray  # float32, [rows, *shape]
    y: np.ndarray | None  # one label per row, or None
    kind: InputKind
    source: Path
    sha256: str
    feature_names: list[str] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_dataset(
    path: Path,
    label_column: str | None = None,
    image_size: tuple[int, int] | None = None,
    image_channels: int | None = None,
) -> Dataset:
    path = Path(path)
    if path.is_dir():
        if label_column is not None:
            raise DataError(
                f"{path}: --label-column applies to .csv and .parquet files; a folder's labels are its subfolders"
            )
        return load_image_folder(path, image_size, image_channels)
    if image_size is not None or image_channels is not None:
        raise DataError(f"{path}: --image-size and --image-channels apply to folders of images")
    if not path.is_file():
        raise DataError(f"{path}: no such file or folder")
    loader = _loader_for(path)
    if label_column is not None and loader not in (_load_csv, _load_parquet):
        raise DataError(f"{path}: --label-column applies to .csv and .parquet files only")
    x, y, names = loader(path, label_column)
    x = _as_features(path, x, names)
    if y is not None and len(y) != len(x):
        raise DataError(f"{path}: {len(y)} labels for {len(x)} rows")
    kind: InputKind = "image" if x.ndim >= 3 else "tabular"
    return Dataset(x=x, y=y, kind=kind, source=path, sha256=file_sha256(path), feature_names=names)


def select_normal(data: Dataset, normal_label: str) -> np.ndarray:
    """The boolean mask of rows whose label equals `normal_label` (given as text on the command line)."""
    if data.y is None:
        raise DataError(f"{data.source}: --normal-label needs labels, and this file has none")
    wanted = _coerce_label(normal_label, data.y)
    mask = data.y == wanted
    if not mask.any():
        known = ", ".join(str(v) for v in np.unique(data.y)[:20])
        raise DataError(f"{data.source}: no row has label {normal_label!r} (labels: {known})")
    return np.asarray(mask)


def normal_mask(data: Dataset, normal_label: str | None) -> np.ndarray | None:
    """Which rows are normal: the given label, or label 0 when labels are 0/1 anomaly flags; else unknown."""
    if normal_label is not None:
        return select_normal(data, normal_label)
    if data.y is not None and data.y.dtype.kind in "biuf" and set(np.unique(data.y)) <= {0, 1}:
        return np.asarray(data.y == 0)
    return None


def _coerce_label(text: str, labels: np.ndarray) -> object:
    if labels.dtype.kind in "iuf":
        try:
            return float(text)
        except ValueError:
            raise DataError(f"label {text!r} is not a number, but the labels are numeric") from None
    return text


def _loader_for(path: Path) -> Callable[..., tuple[np.ndarray, np.ndarray | None, list[str] | None]]:
    name = path.name.lower().removesuffix(".gz")
    for suffix, loader in _LOADERS.items():
        if name.endswith(suffix):
            return loader
    if "idx" in name and "ubyte" in name:
        return _load_idx
    raise DataError(f"{path}: unknown format (expected IDX, .npz, .npy, .csv or .parquet)")


def _as_features(path: Path, x: np.ndarray, names: list[str] | None) -> np.ndarray:
    if x.dtype == object:
        raise DataError(f"{path}: rows have different shapes (ragged array)")
    if x.ndim < 2 or x.shape[0] == 0 or x.size == 0:
        raise DataError(f"{path}: no data (shape {tuple(x.shape)}); expected rows x features or images")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{path}: features must be numeric, got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    # A block of rows at a time: a mask of the whole table would be a quarter of its size again.
    flat = x.reshape(len(x), -1)
    for start in range(0, len(flat), _CHECK_ROWS):
        bad = ~np.isfinite(flat[start : start + _CHECK_ROWS])
        if bad.any():
            row, column = (int(i) for i in np.argwhere(bad)[0])
            where = f"column {names[column]!r}" if names else f"feature {column}"
            raise DataError(f"{path}: NaN or infinite value at row {start + row}, {where}")
    return x


_CHECK_ROWS = 65_536


def _read_idx_array(path: Path) -> np.ndarray:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: IDX header says {dims} but holds {body.size} values")
    return body.reshape(dims)


def _load_idx(path: Path, _label_column: None) -> tuple[np.ndarray, np.ndarray | None, None]:
    x = _read_idx_array(path)
    labels_path = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
    y = _read_idx_array(labels_path) if labels_path != path and labels_path.is_file() else None
    return x, y, None


def _load_npz(path: Path, _label_column: None) -> tuple[np.ndarray, np.ndarray | None, None]:
    with _numpy_errors(path), np.load(path, allow_pickle=False) as archive:
        if "X" not in archive:
            raise DataError(f"{path}: no array 'X' (found: {', '.join(archive.files) or 'none'})")
        y = archive["y"].reshape(-1) if "y" in archive else None
        return archive["X"], y, None


def _load_npy(path: Path, _label_column: None) -> tuple[np.ndarray, None, None]:
    with _numpy_errors(path):
        return np.load(path, allow_pickle=False), None, None


@contextmanager
def _numpy_errors(path: Path) -> Iterator[None]:
    # Without pickling, numpy refuses object arrays (what ragged rows become) and non-numpy files alike.
    try:
        yield
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a plain numeric numpy array (ragged, object or corrupt file): {err}") from None


def _load_csv(path: Path, label_column: str | None) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        table = pacsv.read_csv(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: cannot parse CSV: {err}") from None
    return _split_table(path, table.schema, table.num_rows, table.select, label_column)


def _load_parquet(path: Path, label_column: str | None) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
        # Parquet stores columns apart, so one is read at a time: Arrow never holds the whole table.
        return _split_table(path, file.schema_arrow, file.metadata.num_rows, file.read, label_column)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: cannot read Parquet: {err}") from None


def _split_table(
    path: Path, schema: Any, rows: int, read: Callable[..., Any], label_column: str | None
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """The features and labels of a table whose `read(columns=[name])` gives one column as a table."""
    import pyarrow.types as pat

    names = list(schema.names)
    if label_column is not None and label_column not in names:
        raise DataError(f"{path}: no column {label_column!r} (columns: {', '.join(names)})")
    features = [n for n in names if n != label_column]
    if not features or rows == 0:
        raise DataError(f"{path}: no data rows or no feature columns")
    for name in features:
        kind = schema.field(name).type
        if not (pat.is_integer(kind) or pat.is_floating(kind) or pat.is_boolean(kind)):
            raise DataError(f"{path}: column {name!r} is not numeric (type {kind})")
    # Filled column by column: one float32 table in memory, not a list of columns and a stack.
    x = np.empty((rows, len(features)), dtype=np.float32)
    for index, name in enumerate(features):
        x[:, index] = _column(path, read, name)
    y = None if label_column is None else _column(path, read, label_column, nulls=True)
    return x, y, features


def _column(path: Path, read: Callable[..., Any], name: str, nulls: bool = False) -> np.ndarray:
    column = read(columns=[name]).column(0)
    if column.null_count and not nulls:
        raise DataError(f"{path}: column {name!r} has {column.null_count} empty values")
    return np.asarray(column.to_numpy(zero_copy_only=False))


_LOADERS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray | None, list[str] | None]]] = {
    ".npz": _load_npz,
    ".npy": _load_npy,
    ".csv": _load_csv,
    ".parquet": _load_parquet,
    "-ubyte": _load_idx,
    ".idx": _load_idx,
}


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
# PIL modes that hold one channel; any other (RGB, RGBA, P, CMYK, ...) becomes three.
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def load_image_folder(
    folder: Path, image_size: tuple[int, int] | None = None, image_channels: int | None = None
) -> Dataset:
    """A folder of PNG, JPEG or BMP files (recursive). With first-level subfolders, each file's label is its
    subfolder's name (the ImageFolder convention). Every file becomes one row of the same size and channel
    count, converted by service.images.decode_image, exactly as the service converts an upload."""
    from PIL import Image

    from service.images import ImageError, decode_image

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no PNG, JPEG or BMP images in this folder or below")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    labels = [p.relative_to(folder).parts[0] if len(p.relative_to(folder).parts) > 1 else None for p in files]
    if classes and None in labels:
        stray = files[labels.index(None)]
        raise DataError(f"{stray}: with class subfolders, every image must be in one of them ({', '.join(classes)})")
    headers = {}
    for path in files:
        try:
            with Image.open(path) as image:
                headers[path] = (image.size, image.mode)
        except Exception:  # PIL raises many types on unreadable files
            raise DataError(f"{path}: not a readable PNG, JPEG or BMP image") from None
    width, height = (
        image_size[::-1] if image_size else Counter(size for size, _ in headers.values()).most_common(1)[0][0]
    )
    if image_channels is None:
        grey = sum(mode in _GREY_MODES for _, mode in headers.values())
        image_channels = 1 if 2 * grey >= len(headers) else 3
    row_shape = (height, width) if image_channels == 1 else (height, width, 3)
    # Decoded into their rows of one array: not a list of images and then a stacked copy of it.
    x = np.empty((len(files), *row_shape), dtype=np.float32)
    for row, path in enumerate(files):
        try:
            x[row] = decode_image(path.read_bytes(), row_shape, max_pixels=1 << 31)
        except ImageError as err:
            raise DataError(f"{path}: {err.message}") from None
    y = np.asarray(labels) if classes else None
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(folder)}\0{file_sha256(path)}\n".encode())
    return Dataset(x=x, y=y, kind="image", source=folder, sha256=digest.hexdigest())
