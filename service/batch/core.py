"""The one function both engines run: an Arrow table of input rows in, an Arrow table of answers out.

`Scorer` holds one package's ModelRuntime (service.runtime) and computes through the data plane's
synchronous cores (service.dataplane.scored / encoded / top_features), so a row's answers are the numbers
the service's /score and /encode give for it. Rows are read the way the service reads them: numbers as
float32 and finite, images through service.images as uploads are."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.compute as pc

from service import dataplane, images
from service.batch.config import SCORER_OUTPUTS
from service.batch.errors import BatchError, RowError
from service.codecs import non_finite_rows
from service.errors import ServiceError
from service.repository import Package
from service.runtime import ModelRuntime, Scores, SessionConfig
from service.settings import Settings

LayoutKind = Literal["columns", "tensor", "images"]
# Images are decoded with the service's own limit on one upload's pixels.
MAX_IMAGE_PIXELS: int = Settings.model_fields["max_image_pixels"].default
IMAGE_BYTES, IMAGE_PATH = "bytes", "path"  # the columns of an image folder (as Ray's read_binary_files names them)
TENSOR = "data"  # the column of .npy/.npz rows (as Ray's read_numpy names it)
CUDA = "CUDAExecutionProvider"
T = TypeVar("T")


@dataclass(frozen=True)
class Layout:
    """Where a table's rows are: feature columns (`columns`), one column of fixed-size rows (`tensor`) or
    encoded image files (`images`); and which columns are copied to the answers as they are."""

    kind: LayoutKind
    columns: tuple[str, ...]
    passthrough: tuple[str, ...] = ()


@dataclass(frozen=True)
class Job:
    """What every worker needs to build its Scorer; plain data, so it travels to processes and Ray actors
    (the package's graphs included: workers need no access to the models folder)."""

    package: Package
    layout: Layout
    outputs: tuple[str, ...]
    top_features: int = 3
    vectors: Literal["columns", "list"] = "columns"
    device: Literal["cpu", "cuda"] = "cpu"
    threads: int = 1  # onnxruntime intra-op threads per session


class Scorer:
    """Loads the package once (`__init__`), then answers tables (`__call__`); Ray's actors hold one each."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.manifest = job.package.manifest
        self.runtime = load_runtime(job)
        self._runs: _CpuRuns | _BoundRuns = _BoundRuns(self.runtime) if job.device == "cuda" else _CpuRuns(self.runtime)
        self._offset, self._scale = self.manifest.normalisation()

    def __call__(self, table: pa.Table | pa.RecordBatch) -> pa.Table:
        table = table if isinstance(table, pa.Table) else pa.Table.from_batches([table])
        try:
            x = self._rows(table)
            answers = self._answers(x)
        except RowError as exc:
            raise RowError(exc.row, exc.why + self._naming(table, exc.row)) from None
        kept = {name: table.column(name) for name in self.job.layout.passthrough}
        return pa.table(kept | answers)

    def _naming(self, table: pa.Table, row: int) -> str:
        # An image's message starts with its path already; a table read by Ray has its file's in `path`.
        images = self.job.layout.kind == "images"
        extra = [IMAGE_PATH] if IMAGE_PATH in table.column_names and not images else []
        names = [] if images else list(dict.fromkeys([*extra, *self.job.layout.passthrough]))
        shown = {name: table.column(name)[row].as_py() for name in names if row < table.num_rows}
        return f" ({', '.join(f'{k}={v!r}' for k, v in shown.items())})" if shown else ""

    def _rows(self, table: pa.Table) -> np.ndarray:
        readers: dict[LayoutKind, Callable[[pa.Table], np.ndarray]] = {
            "columns": self._from_columns,
            "tensor": self._from_tensor,
            "images": self._from_images,
        }
        with np.errstate(over="ignore"):  # beyond float32's range is inf, refused just below as the service does
            x = np.ascontiguousarray(readers[self.job.layout.kind](table), dtype=np.float32)
        bad = non_finite_rows(x, 1)
        if bad:
            raise RowError(bad[0], "holds NaN, an infinity or a missing value; the service refuses such rows")
        return x

    def _from_columns(self, table: pa.Table) -> np.ndarray:
        x = np.empty((table.num_rows, len(self.job.layout.columns)), dtype=np.float32)
        for j, name in enumerate(self.job.layout.columns):
            x[:, j] = _numbers(table.column(name), name)
        return x.reshape(table.num_rows, *self.manifest.row_shape)

    def _from_tensor(self, table: pa.Table) -> np.ndarray:
        column = table.column(self.job.layout.columns[0]).combine_chunks()
        array = column.to_numpy() if isinstance(column, pa.ExtensionArray) else _flat_values(column)
        array = array.reshape(table.num_rows, -1)
        if array.shape[1] != self.manifest.features:
            raise RowError(0, f"rows have {array.shape[1]} values; the model takes {list(self.manifest.row_shape)}")
        return array.reshape(table.num_rows, *self.manifest.row_shape)

    def _from_images(self, table: pa.Table) -> np.ndarray:
        pixels = np.empty((table.num_rows, *self.manifest.row_shape), dtype=np.float32)
        for i, data in enumerate(table.column(self.job.layout.columns[0]).to_pylist()):
            try:
                pixels[i] = images.decode_image(data, self.manifest.row_shape, MAX_IMAGE_PIXELS)
            except images.ImageError as exc:
                raise RowError(i, f"{table.column(IMAGE_PATH)[i].as_py()}: {exc.message}") from None
        return images.from_pixels(pixels, self._offset, self._scale)

    def _answers(self, x: np.ndarray) -> dict[str, pa.Array]:
        """Each output's columns, in the order asked for; each graph runs once, and only if asked for."""
        wanted, found = self.job.outputs, dict[str, object]()
        if SCORER_OUTPUTS.intersection(wanted):
            scores = self._runs.score(x)
            found |= self._scored(_checked(dataplane.scored, self.manifest, scores, rows_of=scores.score))
        if "z" in wanted:
            latents, logvar = self._runs.encode(x)
            found["z"] = _checked(dataplane.encoded, latents, logvar, rows_of=latents).latents
        return {name: column for output in wanted for name, column in self._columns(output, found).items()}

    def _scored(self, scored: dataplane.Scored) -> dict[str, object]:
        found: dict[str, object] = {"score": scored.scores, "is_anomaly": scored.is_anomaly}
        found["percentile"] = scored.percentiles
        found["reconstruction"] = scored.reconstructions
        if "top_features" in self.job.outputs:
            found["top_features"] = dataplane.top_features(self.runtime, scored.sq_err, self.job.top_features)
        return found

    def _columns(self, output: str, answers: dict[str, object]) -> dict[str, pa.Array]:
        value = answers[output]
        if isinstance(value, dataplane.TopFeatures):
            return _top_columns(value)
        assert isinstance(value, np.ndarray)
        if output == "z":
            return _vectors("z", value, [str(i) for i in range(value.shape[1])], self.job.vectors)
        if output == "reconstruction":
            names = self.manifest.input.feature_names or [str(i) for i in range(self.manifest.features)]
            image = self.manifest.input.kind == "image"
            return _vectors("x_hat", value, names, "list" if image else self.job.vectors)
        return {output: pa.array(value)}


def check_device(device: str) -> None:
    if device == "cuda" and CUDA not in ort.get_available_providers():
        raise BatchError(
            f"--device cuda needs onnxruntime-gpu and a CUDA device; this onnxruntime offers "
            f"{ort.get_available_providers()}"
        )


def load_runtime(job: Job) -> ModelRuntime:
    """The package's runtime, loaded and warmed up as the service loads it, on the device asked for."""
    check_device(job.device)
    providers = (CUDA,) if job.device == "cuda" else ("CPUExecutionProvider",)
    runtime = ModelRuntime(job.package, SessionConfig(providers, intra_op_threads=job.threads))
    runtime.load()
    if runtime.fell_back:
        raise BatchError(f"--device {job.device}: onnxruntime could not use {providers[0]} ({runtime.providers})")
    return runtime


class _CpuRuns:
    def __init__(self, runtime: ModelRuntime) -> None:
        self.score, self.encode = runtime.score, runtime.encode


class _BoundRuns:
    """CUDA: a table's rows go to the device once, and both graphs read them there (onnxruntime I/O binding);
    only the answers come back."""

    def __init__(self, runtime: ModelRuntime) -> None:
        self._sessions = {role: runtime.session(role) for role in ("scorer", "encoder")}
        self._bound = threading.local()  # the local engine's threads share this Scorer, each with its own rows

    def score(self, x: np.ndarray) -> Scores:
        x_hat, score, sq_err = self._run("scorer", x)
        return Scores(x_hat=x_hat, score=score, sq_err=sq_err)

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        outputs = self._run("encoder", x)
        return outputs[0], (outputs[1] if len(outputs) > 1 else None)

    def _run(self, role: str, x: np.ndarray) -> list[np.ndarray]:
        bound = self._bound
        if getattr(bound, "host", None) is not x:
            bound.host, bound.device = x, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
        session = self._sessions[role]
        binding = session.io_binding()
        binding.bind_ortvalue_input("x", bound.device)
        for output in session.get_outputs():
            binding.bind_output(output.name, "cpu")
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


def _checked(compute: Callable[..., T], *args: object, rows_of: np.ndarray) -> T:
    """The data plane's answer, its refusal of non-finite results named by the first such row."""
    try:
        return compute(*args)
    except ServiceError as exc:
        raise RowError(non_finite_rows(rows_of, 1)[0], exc.message) from None


def _numbers(column: pa.ChunkedArray, name: str) -> np.ndarray:
    """A column's values as floats (nulls: NaN, refused with the row's other non-finite values)."""
    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return column.to_numpy()  # as stored (a cast first cost more than the model's run)
    if pa.types.is_decimal(kind):
        return column.cast(pa.float64()).to_numpy()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        try:
            return pc.cast(column, pa.float64()).to_numpy()
        except pa.ArrowInvalid:
            row, value = next((i, v) for i, v in enumerate(column.to_pylist()) if not _is_number(v))
            raise RowError(row, f"column {name!r} holds {value!r}, not a number") from None
    raise RowError(0, f"column {name!r} is of type {kind}, not numbers")


def _is_number(value: object) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return value is None
    return True


def _flat_values(column: pa.Array) -> np.ndarray:
    while pa.types.is_fixed_size_list(column.type) or pa.types.is_list(column.type):
        column = column.flatten()
    return column.to_numpy(zero_copy_only=False)


def _vectors(prefix: str, value: np.ndarray, names: list[str], layout: str) -> dict[str, pa.Array]:
    flat = value.reshape(len(value), -1)
    if layout == "list":
        return {prefix: pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1])}
    return {f"{prefix}_{name}": pa.array(flat[:, j]) for j, name in enumerate(names)}


def _top_columns(top: dataplane.TopFeatures) -> dict[str, pa.Array]:
    """Per rank i (1 = largest): the part (a table's feature name; an image's region as
    "top,left,bottom,right"), its squared error and its share of the row's."""
    if top.names is not None:
        labels = np.asarray(top.names, dtype=object)
        what, parts = "feature", labels[top.parts]
    else:
        assert top.regions is not None
        labels = np.asarray([",".join(map(str, region)) for region in top.regions.tolist()], dtype=object)
        what, parts = "region", labels[top.parts]
    columns: dict[str, pa.Array] = {}
    for i in range(top.parts.shape[1]):
        columns[f"top_{i + 1}_{what}"] = pa.array(parts[:, i], type=pa.string())
        columns[f"top_{i + 1}_sq_err"] = pa.array(top.sq_err[:, i].astype(np.float32))
        columns[f"top_{i + 1}_share"] = pa.array(top.share[:, i].astype(np.float32))
    return columns
