"""Every knob of a batch job, from `python -m service.batch` flags or AE_BATCH_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# What each row's answer may hold; --outputs picks among them.
OUTPUTS = ("score", "percentile", "is_anomaly", "top_features", "z", "reconstruction")
# The outputs the scorer graph answers (the encoder answers z).
SCORER_OUTPUTS = frozenset({"score", "percentile", "is_anomaly", "top_features", "reconstruction"})


class BatchConfig(BaseSettings):
    """Score and encode a whole dataset (Parquet, CSV, .npy/.npz or an image folder) with a model package,
    writing a folder of Parquet or CSV parts."""

    model_config = SettingsConfigDict(
        env_prefix="AE_BATCH_",
        use_attribute_docstrings=True,
        cli_prog_name="python -m service.batch",
        cli_kebab_case=True,
        cli_hide_none_type=True,
        cli_implicit_flags=True,
        extra="ignore",
    )

    model: str
    """A package folder (models/cardio/1), a model folder (models/cardio: its highest version), or a model
    name looked up in --models-dir."""
    version: int | None = Field(None, ge=1)
    """The version of a model given by name or model folder; unset: the highest."""
    models_dir: Path = Path("models")
    """Where a model given by name is looked up."""
    input: str
    """A file or folder: Parquet, CSV, .npy, .npz or images (PNG, JPEG, BMP); a local path or a URL pyarrow's
    filesystems open (s3://, gs://, hdfs://, file://)."""
    output: str
    """The folder of results to create (local path or URL); written under a temporary name beside it and
    renamed once complete."""
    outputs: Annotated[tuple[str, ...], NoDecode] = ("score", "percentile", "is_anomaly")
    """Comma-separated, among: score, percentile, is_anomaly, top_features, z, reconstruction."""
    passthrough: Annotated[tuple[str, ...], NoDecode] = ()
    """Comma-separated input columns copied into the results (ids, timestamps); image folders always keep
    `path`."""
    top_features: int = Field(3, ge=1, le=100)
    """With --outputs top_features: how many parts per row (features of tables, 4 x 4 regions of images)."""
    vectors: Literal["columns", "list"] = "columns"
    """How z and a table's reconstruction are written: one column each (z_0..z_k, x_hat_<feature>) or one
    list column (z, x_hat). An image's reconstruction is always one list column."""
    format: Literal["parquet", "csv"] = "parquet"
    """The parts' format."""
    array: str | None = None
    """.npz inputs: the array to read; unset: X if present, else the only one."""
    overwrite: bool = False
    """Replace an existing output folder (only once the new one is complete)."""
    engine: Literal["local", "ray"] = "local"
    """local: onnxruntime on this machine's cores; ray: Ray Data with an actor pool (--ray-address)."""
    ray_address: str | None = None
    """A Ray cluster to join (ray://host:10001, auto); unset: a local Ray started for the job."""
    workers: int | None = Field(None, ge=1)
    """Sessions running at once: local threads or processes, or Ray actors; unset: the cores available."""
    parallelism: Literal["thread", "process"] = "thread"
    """The local engine's workers: threads sharing one session (measured fastest, docs/batch.md) or processes
    with a session each."""
    batch_rows: int = Field(4096, ge=1)
    """Rows per onnxruntime run: memory grows with it (a few in flight per worker), not with the dataset."""
    part_rows: int = Field(1_000_000, ge=1)
    """Rows per output part (local engine); Ray writes a part per block."""
    device: Literal["cpu", "cuda"] = "cpu"
    """cuda needs onnxruntime-gpu and a CUDA device; inputs are bound on the device once per batch."""
    progress: bool = True
    """A progress line on stderr (rows, rows/s, ETA); the summary is printed either way."""

    @field_validator("outputs", "passthrough", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @field_validator("outputs")
    @classmethod
    def _known_outputs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in value if name not in OUTPUTS]
        if unknown or not value:
            raise ValueError(f"outputs must be some of {', '.join(OUTPUTS)}; got {', '.join(value) or 'none'}")
        return tuple(dict.fromkeys(value))
