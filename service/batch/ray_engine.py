"""The Ray engine: Ray Data reads the dataset's files, `map_batches` sends Arrow tables through an actor
pool of Scorers (one onnxruntime session each, built once per actor), and Ray writes the parts into the
sink's temporary folder. Ray is imported only here: the local engine needs no Ray."""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from service.batch.core import IMAGE_PATH, Job, Scorer
from service.batch.errors import BatchError, RowError
from service.batch.sinks import Sink
from service.batch.sources import Dataset

ROW_ERROR = re.compile(re.escape(f"{RowError.__module__}.{RowError.__name__}: ") + r"row \d+: (.*)")


def run(
    job: Job,
    dataset: Dataset,
    csv_types: dict[str, pa.DataType],
    address: str | None,
    workers: int | None,
    batch_rows: int,
    progress: bool,
    sink: Sink,
) -> None:
    try:
        import ray
    except ImportError:
        raise BatchError("--engine ray needs Ray Data: pip install 'autoencoder-service[ray]'") from None
    started = not ray.is_initialized()  # a caller's own Ray session is left running; one started here is not
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        _score(ray, job, dataset, csv_types, workers, batch_rows, progress, sink)
    finally:
        if started:
            ray.shutdown()


def _score(
    ray: Any,
    job: Job,
    dataset: Dataset,
    csv_types: dict[str, pa.DataType],
    workers: int | None,
    batch_rows: int,
    progress: bool,
    sink: Sink,
) -> None:
    ray.data.DataContext.get_current().enable_progress_bars = progress
    # One CPU is left to the read and write tasks: an actor pool holding every CPU would wait for them forever.
    actors = workers or max(1, int(ray.cluster_resources().get("CPU", 1)) - 1)
    resources = {"num_gpus": 1} if job.device == "cuda" else {"num_cpus": job.threads}
    scored = _read(ray, dataset, job, csv_types).map_batches(
        Scorer,
        fn_constructor_args=(job,),
        batch_format="pyarrow",
        batch_size=batch_rows,
        compute=ray.data.ActorPoolStrategy(size=actors),
        **resources,
    )
    write = scored.write_parquet if sink.format == "parquet" else scored.write_csv
    try:
        write(sink.folder, filesystem=sink.filesystem)
    except Exception as exc:  # Ray wraps the actor's error in its own types, which vary by where it failed
        raise BatchError(_reason(exc)) from None
    sink.adopt()


def _read(ray: Any, dataset: Dataset, job: Job, csv_types: dict[str, pa.DataType]) -> Any:
    files, filesystem = dataset.uris, dataset.filesystem
    columns = [*job.layout.columns, *job.layout.passthrough]
    # Each row's file comes along (a `path` column the answers leave out) so that a bad row's error names it.
    paths = IMAGE_PATH not in columns
    if dataset.kind == "parquet":
        read = ray.data.read_parquet(files, filesystem=filesystem, include_paths=paths)
        return read.select_columns([*columns, *([IMAGE_PATH] if paths else [])])
    if dataset.kind == "csv":
        options = pacsv.ConvertOptions(column_types=csv_types, include_columns=columns)
        return ray.data.read_csv(files, filesystem=filesystem, convert_options=options, include_paths=paths)
    if dataset.kind == "npy":
        return ray.data.read_numpy(files, filesystem=filesystem)
    return ray.data.read_binary_files(files, filesystem=filesystem, include_paths=True)  # images


def _reason(exc: BaseException) -> str:
    """The bad row's message when the job failed on one, else Ray's own error. Ray sends an actor's error
    to the driver as text (exceptions lose their causes when pickled), so the row's message is found there."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, RowError):
            return f"a row of the dataset: {seen.why}"
        text = f"{getattr(seen, 'traceback_str', '')}\n{seen}"
        found = ROW_ERROR.search(text)
        if found:
            return f"a row of the dataset: {found.group(1)}"
        cause = getattr(seen, "cause", None)
        seen = cause if isinstance(cause, BaseException) else (seen.__cause__ or seen.__context__)
    return f"the Ray job failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
