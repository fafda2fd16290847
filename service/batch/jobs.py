"""One batch job from its config: the package, the dataset and how its rows are laid out, checked before any
work starts; then the chosen engine, the sink and the summary."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from service import memory
from service.batch import local, sources
from service.batch.config import BatchConfig
from service.batch.core import IMAGE_BYTES, IMAGE_PATH, TENSOR, Job, Layout, check_device
from service.batch.errors import BatchError
from service.batch.packages import find_package
from service.batch.progress import Progress, Summary
from service.batch.sinks import Sink
from service.manifest import Manifest
from service.settings import available_cores

# What Ray Data's own readers read; .npz needs the local engine.
RAY_KINDS = ("parquet", "csv", "npy", "images")


@dataclass(frozen=True)
class Plan:
    job: Job
    dataset: sources.Dataset
    csv_types: dict[str, pa.DataType]


def plan(config: BatchConfig) -> Plan:
    package = find_package(config.model, config.version, config.models_dir)
    manifest = package.manifest
    _check_outputs(config, manifest)
    check_device(config.device)
    dataset = sources.find(config.input)
    if config.engine == "ray" and dataset.kind not in RAY_KINDS:
        raise BatchError(f"--engine ray reads {', '.join(RAY_KINDS)}; {dataset.kind} needs --engine local")
    named = manifest.input.feature_names
    csv_types = {name: pa.float64() for name in named or []} if dataset.kind == "csv" else {}
    layout = _layout(config, manifest, dataset, csv_types)
    job = Job(package, layout, config.outputs, config.top_features, config.vectors, config.device)
    return Plan(job, dataset, csv_types)


def run_job(config: BatchConfig) -> Summary:
    _apart(config.input, config.output)
    memory.configure()  # as the service does: threads' freed buffers go back, not into arenas of their own
    chosen = plan(config)
    job, dataset = chosen.job, chosen.dataset
    about = {
        "model": {"name": job.package.manifest.name, "version": job.package.manifest.version},
        "input": config.input,
        "outputs": list(config.outputs),
        "engine": config.engine,
    }
    with Sink(config.output, config.format, config.part_rows, config.overwrite) as sink:
        progress = Progress(sources.total_rows(dataset, config.array), config.progress)
        if config.engine == "ray":
            from service.batch import ray_engine

            ray_engine.run(
                job,
                dataset,
                chosen.csv_types,
                config.ray_address,
                config.workers,
                config.batch_rows,
                config.progress,
                sink,
            )
        else:
            columns = [*job.layout.columns, *job.layout.passthrough] if job.layout.kind == "columns" else None
            chunks = sources.chunks(dataset, config.batch_rows, columns, chosen.csv_types, config.array)
            workers = config.workers or available_cores()
            local.run(job, chunks, workers, config.parallelism, sink, progress)
        progress.done()
        seconds = progress.elapsed()
        sink.commit(about | {"seconds": round(seconds, 3)})
    return Summary(sink.written.rows, sink.written.anomalies, seconds, config.output)


def _check_outputs(config: BatchConfig, manifest: Manifest) -> None:
    if "percentile" in config.outputs and manifest.score.quantiles is None:
        raise BatchError(f"{manifest.name}/{manifest.version} has no percentile curve: drop percentile from --outputs")
    lists = config.vectors == "list" or ("reconstruction" in config.outputs and manifest.input.kind == "image")
    if config.format == "csv" and lists and {"z", "reconstruction"} & set(config.outputs):
        raise BatchError("CSV parts cannot hold list columns: use --vectors columns (tables) or --format parquet")


def _layout(
    config: BatchConfig, manifest: Manifest, dataset: sources.Dataset, csv_types: dict[str, pa.DataType]
) -> Layout:
    if dataset.kind == "images":
        if manifest.input.kind != "image":
            raise BatchError(f"{config.input} is an image folder; {manifest.name} is a {manifest.input.kind} model")
        if set(config.passthrough) - {IMAGE_PATH}:
            raise BatchError(f"an image folder's rows have only one column to pass through: {IMAGE_PATH}")
        return Layout("images", (IMAGE_BYTES,), (IMAGE_PATH,))
    if dataset.kind in ("npy", "npz"):
        if config.passthrough:
            raise BatchError("arrays have no columns to pass through; rows keep their order in the output")
        return Layout("tensor", (TENSOR,))
    found = sources.schema(dataset, csv_types)
    first = dataset.files[0]
    missing = [name for name in config.passthrough if name not in found.names]
    if missing:
        raise BatchError(f"{first}: no passthrough column {', '.join(map(repr, missing))}")
    return Layout("columns", _feature_columns(manifest, found, config.passthrough, first), config.passthrough)


def _feature_columns(manifest: Manifest, found: pa.Schema, passthrough: tuple[str, ...], first: str) -> tuple[str, ...]:
    """The manifest's feature names when it has them, else every numeric column but the passthrough ones,
    in order."""
    named = manifest.input.feature_names
    if named is not None:
        missing = [name for name in named if name not in found.names]
        if missing:
            raise BatchError(f"{first}: the model reads columns {', '.join(map(repr, missing[:10]))}, which it lacks")
        return tuple(named)
    # Every other column, when their count fits: a number column with one typo (read as text) is then
    # reported at its row, not left out. Else the numeric ones, when theirs fits.
    others = [f.name for f in found if f.name not in passthrough]
    numeric = [f.name for f in found if _numeric(f.type) and f.name not in passthrough]
    for columns in (others, numeric):
        if len(columns) == manifest.features:
            return tuple(columns)
    text = [name for name in others if name not in numeric]
    besides = f" (not numbers: {', '.join(text[:10])})" if text else ""
    raise BatchError(
        f"{first}: {len(numeric)} numeric columns besides the passthrough ones{besides}; "
        f"{manifest.name} takes {manifest.features} (name the others with --passthrough)"
    )


def _numeric(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)


def _apart(input_uri: str, output_uri: str) -> None:
    """The output may be neither the input nor a folder holding it: replacing it would delete the data."""
    if "://" in input_uri or "://" in output_uri:
        inside = input_uri.rstrip("/") == output_uri.rstrip("/") or input_uri.startswith(output_uri.rstrip("/") + "/")
    else:
        data, out = Path(input_uri).resolve(), Path(output_uri).resolve()
        inside = data == out or out in data.parents
    if inside:
        raise BatchError(f"--output {output_uri} holds the input {input_uri}; write the results elsewhere")
