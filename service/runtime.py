"""One ModelRuntime per served model: its onnxruntime sessions, created once and warmed up, behind
numpy-in, numpy-out methods. Every protocol calls these: the async ones batch rows of concurrent requests
into one run (service.batching), the plain ones run a graph at once."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import onnxruntime as ort

from service import logs
from service.batching import Batcher, Held, Outputs, overloaded
from service.manifest import GRAPH_ROLES, Manifest, PackageError, graph_io
from service.metrics import Metrics
from service.repository import Package

logger = logging.getLogger(__name__)

ONNX_FLOAT = "tensor(float)"
PRICE_ROWS = 64  # the larger of the two runs that price a graph at load


@dataclass(frozen=True)
class SessionConfig:
    """How every session is built: the providers asked for (in order), onnxruntime's thread pools, and how
    requests are batched: at most `batch_rows` rows per run, an idle graph waiting `batch_wait_s` for more."""

    providers: tuple[str, ...]
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    batch_rows: int = 1024
    batch_wait_s: float = 0.001
    batch_in_flight: int = 1
    max_queue_wait_s: float = 1.0


@dataclass(frozen=True)
class Scores:
    x_hat: np.ndarray  # [n, *S], raw scale
    score: np.ndarray  # [n]
    sq_err: np.ndarray  # [n, *S], normalised space


def _tensor_shapes(manifest: Manifest) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape without the batch axis; the same name means the same shape in every graph."""
    row, latent = manifest.row_shape, (manifest.latent.dim,)
    return {"x": row, "z": latent, "z_logvar": latent, "x_hat": row, "score": (), "sq_err": row}


class ModelRuntime:
    """Sessions for one package. `load()` does all the work; the predict methods only run graphs.

    The registry lends a runtime to each request (`acquire`/`release`) and `retire()`s it when a newer copy
    replaces it or its folder goes: it then closes once the last request it lent itself to has finished."""

    def __init__(self, package: Package, config: SessionConfig, metrics: Metrics | None = None) -> None:
        self.manifest = package.manifest
        self.config = config
        self.ready = False
        self._graphs = package.graphs
        self._metrics = metrics
        # Where service.dataplane.score records the scores it computes (service.monitoring); None: not monitored.
        self.monitor = metrics.monitoring.recorder(self.manifest) if metrics else None
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._batchers: dict[str, Batcher] = {}
        self._latent_mean = np.zeros(self.manifest.latent.dim, dtype=np.float32)
        self._latent_factor = np.eye(self.manifest.latent.dim, dtype=np.float32)
        self._input_names: dict[str, str] = {}
        self._leases = 0
        self.retired = False

    @property
    def label(self) -> str:
        return f"{self.manifest.name}/{self.manifest.version}"

    @property
    def providers(self) -> list[str]:
        """The providers onnxruntime really gave the sessions, best first (empty before load)."""
        return self._sessions["scorer"].get_providers() if self._sessions else []

    @property
    def fell_back(self) -> bool:
        """True when the first provider asked for is not the one running the model."""
        return bool(self.providers) and self.providers[0] != self.config.providers[0]

    def load(self) -> None:
        """Creates the sessions, checks them against the manifest, warms them up; then the model is ready."""
        self._sessions = {role: self._session(role) for role in GRAPH_ROLES}
        self._check_graphs()
        self._input_names = {role: session.get_inputs()[0].name for role, session in self._sessions.items()}
        if self.manifest.prior == "empirical":
            self._latent_mean, self._latent_factor = _gaussian_factor(self.manifest)
        self._warm_up()
        self._graphs = {}  # onnxruntime holds its own copy now
        self._batchers = {
            role: Batcher(
                partial(self._run, role),
                self.config.batch_rows,
                self.config.batch_wait_s,
                self._metrics.for_graph(self.manifest.name, self.manifest.version, role) if self._metrics else None,
                self.config.batch_in_flight,
                self.config.max_queue_wait_s,
                {"model": self.manifest.name, "model.version": self.manifest.version, "graph": role},
            )
            for role in GRAPH_ROLES
        }
        self._price_runs()
        if self.fell_back:
            logger.warning("%s asked for %s but runs on %s", self.label, list(self.config.providers), self.providers)
        self.ready = True

    def acquire(self) -> None:
        self._leases += 1

    def release(self) -> None:
        self._leases -= 1
        if self.retired and self._leases == 0:
            self.close()

    def retire(self) -> None:
        """No new requests from now on; closes at once if none is in flight, else when the last one ends."""
        self.retired, self.ready = True, False
        logger.info("model %s retired, %d requests in flight", self.label, self._leases, extra=self._fields())
        if self._leases == 0:
            self.close()

    def close(self) -> None:
        for batcher in self._batchers.values():
            batcher.close()
        self._batchers, self._sessions = {}, {}
        logger.info("model %s unloaded", self.label, extra=self._fields())

    def _fields(self) -> dict[str, object]:
        return logs.fields(model=self.manifest.name, version=self.manifest.version)

    def admit(self, roles: Sequence[str], rows: int) -> Held | None:
        """503 `overloaded` when `rows` more rows could start within the queue wait budget on none of these
        graphs: what a request that will run one of them gets, asked before its body is read. Admitted into
        one graph (the request runs that one), the rows are held there until they join its queue."""
        waits = {role: self._batchers[role].wait_s(rows) for role in roles}
        wait = min(waits.values())
        if wait > self.config.max_queue_wait_s:
            raise overloaded(wait, self.config.max_queue_wait_s)
        return self._batchers[roles[0]].hold(rows) if len(roles) == 1 else None

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Latent vectors [n, L] (a VAE: the mean) and, for a VAE, the log-variance [n, L]."""
        outputs = self._sessions["encoder"].run(None, {"x": x})
        return outputs[0], (outputs[1] if len(outputs) > 1 else None)

    def decode(self, z: np.ndarray) -> np.ndarray:
        return self._sessions["decoder"].run(None, {"z": z})[0]

    def score(self, x: np.ndarray) -> Scores:
        x_hat, score, sq_err = self._sessions["scorer"].run(None, {"x": x})
        return Scores(x_hat=x_hat, score=score, sq_err=sq_err)

    def session(self, role: str) -> ort.InferenceSession:
        """The loaded session of a graph, for callers that run it their own way (service.batch binds its
        inputs on the device once, for every graph)."""
        return self._sessions[role]

    async def encode_batched(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        outputs = await self._batchers["encoder"].submit(x)
        return outputs[0], (outputs[1] if len(outputs) > 1 else None)

    async def decode_batched(self, z: np.ndarray) -> np.ndarray:
        return (await self._batchers["decoder"].submit(z))[0]

    async def score_batched(self, x: np.ndarray) -> Scores:
        x_hat, score, sq_err = await self._batchers["scorer"].submit(x)
        return Scores(x_hat=x_hat, score=score, sq_err=sq_err)

    def _run(self, role: str, x: np.ndarray) -> Outputs:
        return self._sessions[role].run(None, {self._input_names[role]: x})

    def sample_latents(self, n: int, seed: int | None) -> np.ndarray:
        """n draws from N(0, I) for a VAE, else from N(latent.mean, latent.cov) of the training rows."""
        noise = np.random.default_rng(seed).standard_normal((n, self.manifest.latent.dim))
        return (self._latent_mean + noise @ self._latent_factor.T).astype(np.float32)

    def _session(self, role: str) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.config.intra_op_threads
        options.inter_op_num_threads = self.config.inter_op_threads
        providers = list(self.config.providers)
        if "CPUExecutionProvider" not in providers:
            providers.append("CPUExecutionProvider")
        file = self.manifest.graphs[role].file
        try:
            return ort.InferenceSession(self._graphs[role], sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable graphs
            raise PackageError(f"{file}: onnxruntime cannot load it: {exc}") from exc

    def _check_graphs(self) -> None:
        shapes = _tensor_shapes(self.manifest)
        for role, (inputs, outputs) in graph_io(self.manifest.architecture.variational).items():
            session = self._sessions[role]
            graph = self.manifest.graphs[role]
            where = graph.file
            found = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
            if found != (inputs, outputs) or (graph.inputs, graph.outputs) != (inputs, outputs):
                raise PackageError(
                    f"{where}: inputs/outputs {found[0]}/{found[1]} (manifest: {graph.inputs}/{graph.outputs}), "
                    f"the format requires {inputs}/{outputs}"
                )
            for arg in [*session.get_inputs(), *session.get_outputs()]:
                _check_tensor(where, arg, shapes[arg.name])

    def _price_runs(self) -> None:
        # Admission prices the queue by what runs cost; without a price it could only admit what goes out
        # with the next run, and a burst at start-up would be refused. So each batcher starts from two timed
        # runs, a small and a larger one (fixed and per-row parts), and follows the real runs from there.
        for role, batcher in self._batchers.items():
            width = (self.manifest.latent.dim,) if role == "decoder" else self.manifest.row_shape
            for rows in sorted({1, min(PRICE_ROWS, self.config.batch_rows)}):
                x = np.zeros((rows, *width), dtype=np.float32)
                batcher.cost.observe(rows, _timed(partial(self._run, role, x)))

    def _warm_up(self) -> None:
        # The first run allocates and optimises; doing it here keeps that cost off the first request and
        # proves the graphs produce what the manifest says on real data.
        rows = 2
        x = np.zeros((rows, *self.manifest.row_shape), dtype=np.float32)
        z = np.zeros((rows, self.manifest.latent.dim), dtype=np.float32)
        scores = self.score(x)
        latents, _ = self.encode(x)
        got = {"x_hat": scores.x_hat, "score": scores.score, "z": latents, "decoded x_hat": self.decode(z)}
        want = {"x_hat": x.shape, "score": (rows,), "z": z.shape, "decoded x_hat": x.shape}
        for name, array in got.items():
            if array.shape != want[name]:
                raise PackageError(f"warm-up: {name} has shape {list(array.shape)}, expected {list(want[name])}")


def _timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def _check_tensor(where: str, arg: ort.NodeArg, row_shape: tuple[int, ...]) -> None:
    if arg.type != ONNX_FLOAT:
        raise PackageError(f"{where}: {arg.name} is {arg.type}, the format requires {ONNX_FLOAT}")
    shape = list(arg.shape)
    # Symbolic axes (strings or None) are accepted; a fixed axis must equal the manifest's.
    fixed = [(got, want) for got, want in zip(shape[1:], row_shape, strict=False) if isinstance(got, int)]
    if len(shape) != len(row_shape) + 1 or any(got != want for got, want in fixed) or isinstance(shape[0], int):
        expected = ["batch", *row_shape]
        raise PackageError(f"{where}: {arg.name} has shape {shape}; the manifest implies {expected} (batch dynamic)")


def _gaussian_factor(manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
    """mean and A with A A^T = cov, so mean + A e ~ N(mean, cov); tolerates a singular covariance."""
    cov = np.asarray(manifest.latent.cov, dtype=np.float64)
    values, vectors = np.linalg.eigh((cov + cov.T) / 2)
    factor = vectors * np.sqrt(np.clip(values, 0.0, None))
    return np.asarray(manifest.latent.mean, dtype=np.float32), factor.astype(np.float32)
