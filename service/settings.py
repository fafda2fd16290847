"""Every knob of the service, from AE_* environment variables or `python -m service` flags."""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import onnxruntime as ort
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.monitoring import DEFAULT_WINDOW_TEXT, Window

# More workers than this rarely pay for their memory (each loads every model): past it, give cores to
# onnxruntime's threads instead.
MAX_AUTO_WORKERS = 4

LogLevel = Literal["critical", "error", "warning", "info", "debug"]


class Settings(BaseSettings):
    """Serve autoencoder model packages (encode, decode, reconstruct, score, generate) over HTTP."""

    model_config = SettingsConfigDict(
        env_prefix="AE_",
        use_attribute_docstrings=True,
        cli_prog_name="python -m service",
        cli_kebab_case=True,
        cli_show_env_vars=True,
        cli_hide_none_type=True,
        cli_implicit_flags=True,
        extra="ignore",
    )

    host: str = "127.0.0.1"
    """Interface uvicorn binds to."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port the service listens on; 0 takes a free one, which the log's "Listening at" line names."""
    grpc_port: int = Field(8001, ge=0, le=65535)
    """TCP port of the gRPC server (the Open Inference Protocol's GRPCInferenceService, gRPC health and
    reflection), on the same interface; 0 turns gRPC off."""
    grpc_max_concurrent_rpcs: int = Field(256, ge=1)
    """Most gRPC inference calls each worker handles at once, counted from when their message has arrived;
    past it a call is refused with UNAVAILABLE and a retry hint. Each may hold a message of up to
    max-body-bytes."""
    log_level: LogLevel = "info"
    """Log level of the service and of uvicorn."""
    log_format: Literal["text", "json"] = "text"
    """How log lines are written: text, or json (one object per line, the images' default); gunicorn's and
    uvicorn's lines too (docs/tracing-and-logs.md)."""
    models_dir: Path = Path("models")
    """Model repository: one models/<name>/<version>/ package per served model."""
    default_model: str | None = None
    """Model served when a request names none; unset means the first name alphabetically."""
    providers: Annotated[tuple[str, ...], NoDecode] = ()
    """onnxruntime execution providers, comma-separated, most preferred first; empty means CUDA when
    onnxruntime can use it, else CPU."""
    intra_op_threads: int | None = Field(None, ge=0)
    """Threads onnxruntime uses inside one operator, in each worker; unset: the worker's share of the cores
    this process may use (affinity and cgroup quota) less one, so its event loop keeps a core, at least 1;
    0 lets onnxruntime choose."""
    inter_op_threads: int = Field(0, ge=0)
    """Threads onnxruntime uses across independent operators; 0 lets onnxruntime choose."""
    max_batch_rows: int = Field(1024, ge=1)
    """Most rows one request may carry (and most samples /generate may make); more is refused with 413."""
    batch_rows: int = Field(1024, ge=1)
    """Most rows one onnxruntime run gathers from concurrent requests; a larger request is split, not refused."""
    batch_wait_ms: float = Field(1.0, ge=0)
    """How long an idle model waits for more requests before it runs a batch, in milliseconds. While a batch
    computes, the requests that arrive meanwhile form the next one without waiting."""
    batch_in_flight: int = Field(1, ge=1)
    """Batches of one model's graph computing at once, each in its own thread. More than one overlaps
    computing with reading the next requests, at the cost of a core per batch."""
    max_queue_wait_ms: float = Field(1000.0, ge=0)
    """Longest a request's rows may wait for a model's batch to start, estimated from the work queued ahead
    of them; a request over it is refused at once with 503 `overloaded` and Retry-After. 0: no limit."""
    request_timeout_s: float = Field(30.0, gt=0)
    """Longest an inference request may take, reading its body included; 504 `timeout` after it."""
    shutdown_timeout_s: int = Field(30, ge=0)
    """Longest a worker that stops (SIGTERM, Ctrl-C, SIGHUP's replacement, max-requests) waits for its
    requests in flight; the arbiter kills it 5 s after that."""
    workers: int | None = Field(None, ge=1)
    """Worker processes, each with its own event loop; each loads every model and batches on its own. Unset:
    one per core this process may use, at most 4, since one Python event loop cannot keep two cores busy;
    1 when the repository API is on (admin-keys), whose calls act on the one worker that answers them."""
    worker_timeout_s: float = Field(30.0, gt=0)
    """A worker whose event loop has not run for this long (hung: a deadlock, a stopped process) is sent
    SIGABRT, which writes its threads' tracebacks to the log, then killed and replaced; whole seconds
    (gunicorn's timeout), rounded up."""
    max_requests: int = Field(0, ge=0)
    """A worker that has answered this many requests is replaced (memory a long run accumulates is
    returned): a fresh one starts, and once it listens the old one drains and exits, so serving goes on
    throughout, with one worker too; 0: never."""
    max_requests_jitter: int = Field(0, ge=0)
    """Up to this many more requests before a worker is replaced, drawn per worker, so the workers are not
    all replaced at once."""
    loop: Literal["auto", "asyncio", "uvloop"] = "uvloop"
    """Event loop implementation uvicorn runs."""
    http: Literal["auto", "h11", "httptools"] = "httptools"
    """HTTP parser uvicorn uses (auto and httptools: httptools with the header limit and timeout below; h11
    applies the header limit only)."""
    max_header_bytes: int = Field(32 * 1024, ge=1024)
    """Largest request line and headers together, in bytes; larger is refused with 431."""
    header_timeout_s: float = Field(10.0, gt=0)
    """Longest a request line and headers may take to arrive, from the connection's opening or the previous
    answer; after it the connection is closed."""
    send_timeout_s: float = Field(30.0, gt=0)
    """Longest a client may leave its answer unread (the server's send buffer full) before the connection is
    dropped."""
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1)
    """Largest request body in bytes, uploads included; larger is refused with 413."""
    body_timeout_s: float = Field(20.0, gt=0)
    """Longest a request body may take to arrive, from its first byte read; a stalled one gets 408."""
    max_body_bytes_in_flight: int = Field(256 * 1024 * 1024, ge=1)
    """Most request-body bytes held by all requests in progress together; over it, 503 `overloaded`."""
    max_image_pixels: int = Field(4096 * 4096, ge=1)
    """Largest uploaded image (width x height) decoded before resizing; larger is refused with 413."""
    max_request_pixels: int = Field(4 * 4096 * 4096, ge=1)
    """Most pixels all the images of one request may hold together; more is refused with 413 before any is
    decoded."""
    max_pixels_in_flight: int = Field(2 * 4 * 4096 * 4096, ge=1)
    """Most image pixels each worker decodes at once, over all its requests (a few bytes each while decoded,
    however small the upload); a request past it is refused with 503 `overloaded` and Retry-After."""
    reload_interval: float = Field(2.0, ge=0)
    """Seconds between two scans of the models directory for new, changed and removed packages; 0 turns
    polling off (the repository API can still load and unload)."""
    admin_keys: Annotated[tuple[str, ...], NoDecode] = ()
    """Keys of the repository API (POST /v2/repository/...), comma-separated, sent as `Authorization: Bearer
    KEY`; empty turns that API off."""
    api_keys: Annotated[tuple[str, ...], NoDecode] = ()
    """Keys every other route asks for, comma-separated, sent as `Authorization: Bearer KEY` or `X-API-Key:
    KEY`; empty (and no api-keys-file) leaves the routes open. Health, readiness and the page's static files
    stay open."""
    api_keys_file: Path | None = None
    """A file of API keys, one per line (blank lines and lines starting with # ignored), added to api-keys;
    read at start-up (e.g. a Kubernetes Secret mounted as a file)."""
    metrics_need_key: bool = False
    """Whether GET /metrics asks for an API key too (it names the models and their traffic)."""
    monitor_window: str = DEFAULT_WINDOW_TEXT
    """Score monitoring's window, over all workers (docs/monitoring.md): the last N rows scored (`1000`), or
    the last T seconds (`300s`, `5m`, `1h`); `0` turns monitoring off."""

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_case_level(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("models_dir")
    @classmethod
    def _models_dir_exists(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"models directory {str(value)!r} does not exist")
        return value

    @field_validator("providers", "admin_keys", "api_keys", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # A typo should stop the start-up, not silently fall back to CPU.
        unknown = sorted(set(value) - set(ort.get_all_providers()))
        if unknown:
            raise ValueError(f"unknown onnxruntime providers {unknown}; known: {ort.get_all_providers()}")
        return value

    @field_validator("monitor_window")
    @classmethod
    def _a_window(cls, value: str) -> str:
        Window.parse(value)
        return value

    @field_validator("api_keys_file")
    @classmethod
    def _readable_keys_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"API keys file {str(value)!r} does not exist")
        return value

    def all_api_keys(self) -> tuple[str, ...]:
        """api-keys and the keys in api-keys-file."""
        if self.api_keys_file is None:
            return self.api_keys
        lines = (line.strip() for line in self.api_keys_file.read_text().splitlines())
        return (*self.api_keys, *(line for line in lines if line and not line.startswith("#")))

    def worker_count(self) -> int:
        """The worker processes to run: the setting, else from the cores available."""
        if self.workers is not None:
            return self.workers
        if self.admin_keys:
            return 1
        return min(available_cores(), MAX_AUTO_WORKERS)

    def onnxruntime_threads(self) -> int:
        """The intra-op thread count each worker's sessions get: the setting, else from the cores available."""
        if self.intra_op_threads is not None:
            return self.intra_op_threads
        return max(1, available_cores() // self.worker_count() - 1)

    def execution_providers(self) -> list[str]:
        """The providers asked of every session: the setting, else CUDA when available, else CPU."""
        if self.providers:
            return list(self.providers)
        if "CUDAExecutionProvider" in ort.get_available_providers():
            _load_cuda_from_wheels()
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]


def _load_cuda_from_wheels() -> None:
    """`make serve GPU=1` installs CUDA and cuDNN as NVIDIA's pip packages (onnxruntime-gpu[cuda,cudnn]),
    which onnxruntime finds only once preloaded; images with CUDA on the system path have none to load."""
    if importlib.util.find_spec("nvidia") is not None and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()


def available_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota (containers, Kubernetes
    limits), which os.cpu_count() does not see."""
    cores = len(os.sched_getaffinity(0))
    quota = _cgroup_cpu_quota(cgroup)
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def _cgroup_cpu_quota(cgroup: Path) -> float | None:
    """CPUs' worth of time per period the cgroup allows; None when unlimited or unknown."""
    try:
        limit, period = (cgroup / "cpu.max").read_text().split()  # cgroup v2: "200000 100000" or "max 100000"
    except (OSError, ValueError):
        try:  # cgroup v1
            limit = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if limit in ("max", "-1") or not limit.isdigit() or not period.isdigit() or int(period) == 0:
        return None
    return int(limit) / int(period)
