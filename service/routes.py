"""Thin endpoints: parse (service.payloads), run the model off the event loop, write the answer.

Every inference route is served three ways: `/encode?model=NAME&version=V`, `/models/NAME/encode` and
`/models/NAME/versions/V/encode`; without a model, the default model at its highest version."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Path, Request, Response
from starlette.routing import Match, Route
from starlette.types import Scope

from service import codecs, metrics, schemas
from service.errors import ServiceError
from service.payloads import Result, RowsRequest, read_json, read_rows, respond
from service.repository import ModelEntry, Repository
from service.runtime import ModelRuntime
from service.settings import Settings


# Dependencies are `async def`: FastAPI runs plain `def` ones in a thread pool, three thread hops a request.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_repository(request: Request) -> Repository:
    return request.app.state.repository


async def get_runtime(repository: RepositoryDep, model: str | None = None, version: str | None = None) -> ModelRuntime:
    return repository.runtime(model, version)


ModelName = Annotated[str, Path(description="model name", examples=["mnist-dense"])]
ModelVersion = Annotated[str, Path(description="model version", examples=["1"])]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RepositoryDep = Annotated[Repository, Depends(get_repository)]
RuntimeDep = Annotated[ModelRuntime, Depends(get_runtime)]


def _inputs(settings: Settings, runtime: ModelRuntime, **options: tuple[type, Any]) -> RowsRequest:
    return RowsRequest(
        key="inputs",
        row_shape=runtime.manifest.row_shape,
        max_rows=settings.max_batch_rows,
        options=options,
        uploads=True,
        max_image_pixels=settings.max_image_pixels,
    )


def _latents(settings: Settings, runtime: ModelRuntime) -> RowsRequest:
    return RowsRequest(key="latents", row_shape=(runtime.manifest.latent.dim,), max_rows=settings.max_batch_rows)


def _answer(runtime: ModelRuntime, **body: Any) -> dict[str, Any]:
    return {"model": runtime.manifest.name, "version": runtime.manifest.version, **body}


def _images(runtime: ModelRuntime, rows: np.ndarray) -> np.ndarray | None:
    return rows if runtime.manifest.input.kind == "image" else None


async def encode(request: Request, runtime: RuntimeDep, settings: SettingsDep) -> Response:
    """Latent vectors of the rows (a VAE: the mean; `return_logvar` adds the log-variance)."""
    x, options = await read_rows(request, _inputs(settings, runtime, return_logvar=(bool, False)), runtime)
    if options["return_logvar"] and not runtime.manifest.architecture.variational:
        raise ServiceError(422, "invalid_request", f"{runtime.manifest.name} is not a VAE: it has no log-variance")
    z, logvar = await runtime.encode_batched(x)
    extra = {"logvar": logvar} if options["return_logvar"] else {}
    return respond(request, runtime, Result(_answer(runtime, latents=z, **extra), "latents"))


async def decode(request: Request, runtime: RuntimeDep, settings: SettingsDep) -> Response:
    """Reconstructions (raw scale) decoded from latent vectors; image models answer PNG on request."""
    z, _ = await read_rows(request, _latents(settings, runtime), runtime)
    x_hat = await runtime.decode_batched(z)
    return respond(
        request, runtime, Result(_answer(runtime, reconstructions=x_hat), "reconstructions", _images(runtime, x_hat))
    )


async def reconstruct(request: Request, runtime: RuntimeDep, settings: SettingsDep) -> Response:
    """Reconstructions of the rows and their anomaly scores; image models answer PNG on request."""
    x, _ = await read_rows(request, _inputs(settings, runtime), runtime)
    scores = await runtime.score_batched(x)
    body = _answer(runtime, reconstructions=scores.x_hat, scores=scores.score)
    return respond(request, runtime, Result(body, "reconstructions", _images(runtime, scores.x_hat)))


async def score(request: Request, runtime: RuntimeDep, settings: SettingsDep) -> Response:
    """Per-row anomaly scores (mean squared error in normalised space), the threshold, and is_anomaly."""
    x, options = await read_rows(request, _inputs(settings, runtime, return_sq_err=(bool, False)), runtime)
    scores = await runtime.score_batched(x)
    threshold = runtime.manifest.score.threshold
    extra = {"sq_err": scores.sq_err} if options["return_sq_err"] else {}
    body = _answer(runtime, scores=scores.score, threshold=threshold, is_anomaly=scores.score > threshold, **extra)
    return respond(request, runtime, Result(body, "scores"))


async def generate(request: Request, runtime: RuntimeDep, settings: SettingsDep) -> Response:
    """n samples decoded from the latent prior (a VAE: N(0, I); else N(mean, cov) of the training rows)."""
    options = await read_json(request, ["n"], {"seed": (int, None)})
    n, seed = options["n"], options["seed"]
    if type(n) is not int or n < 1:
        raise ServiceError(422, "invalid_request", f"n must be a positive integer, got {n!r}")
    if seed is not None and seed < 0:
        raise ServiceError(422, "invalid_request", f"seed must be a non-negative integer, got {seed}")
    if n > settings.max_batch_rows:
        raise ServiceError(413, "too_many_rows", f"n is {n}; at most {settings.max_batch_rows} per request")
    z = runtime.sample_latents(n, seed)
    x_hat = await runtime.decode_batched(z)
    return respond(
        request, runtime, Result(_answer(runtime, latents=z, samples=x_hat), "samples", _images(runtime, x_hat))
    )


# operation -> (endpoint, accepts image uploads, can answer image/png)
_INFERENCE: dict[str, tuple[Callable[..., Awaitable[Response]], bool, bool]] = {
    "encode": (encode, True, False),
    "decode": (decode, False, True),
    "reconstruct": (reconstruct, True, True),
    "score": (score, True, False),
    "generate": (generate, False, True),
}
_PREFIXES = {"": "default", "/models/{model}": "by-name", "/models/{model}/versions/{version}": "by-version"}


class _InferenceRoute(Route):
    """A plain Starlette route that, like FastAPI's, leaves itself in the scope (service.metrics reads it)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match != Match.NONE:
            child_scope["route"] = self
        return match, child_scope


def _plain(endpoint: Callable[..., Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        app, path, query = request.app, request.path_params, request.query_params
        runtime = app.state.repository.runtime(
            path.get("model") or query.get("model"), path.get("version") or query.get("version")
        )
        return await endpoint(request, runtime, app.state.settings)

    return handle


def inference_routes() -> list[Route]:
    """The inference endpoints as plain Starlette routes, matched before inference_router()'s: FastAPI's
    dependency solving and request wrapping cost about 40% of a one-row request (py-spy). The FastAPI routes
    stay registered behind them for the OpenAPI page, which documents the same endpoints."""
    return [
        _InferenceRoute(f"{prefix}/{operation}", _plain(endpoint), methods=["POST"], name=f"{operation}-{style}")
        for prefix, style in _PREFIXES.items()
        for operation, (endpoint, _, _) in _INFERENCE.items()
    ]


def inference_router() -> APIRouter:
    router = APIRouter()
    for prefix, style in _PREFIXES.items():
        for operation, (endpoint, uploads, png) in _INFERENCE.items():
            router.add_api_route(
                f"{prefix}/{operation}",
                endpoint,
                methods=["POST"],
                name=f"{operation}-{style}",
                operation_id=f"{operation}_{style.replace('-', '_')}",
                tags=["inference" if not prefix else f"inference ({style})"],
                **schemas.openapi_for(operation, uploads, png),
            )
    return router


def describe(entry: ModelEntry, repository: Repository) -> dict[str, Any]:
    """What GET /models says of one package: status, providers, and the manifest's facts."""
    runtime = entry.runtime
    facts = {}
    if entry.manifest is not None:
        facts = entry.manifest.model_dump(
            mode="json", exclude={"name": True, "version": True, "files": True, "latent": {"mean", "cov"}}
        )
        facts["latent"]["prior"] = entry.manifest.prior
    return {
        "name": entry.name,
        "version": entry.version,
        "default": entry.version == repository.default_version(entry.name),
        "status": entry.status,
        "reason": entry.reason,
        "requested_providers": list(repository.sessions.providers),
        "providers": runtime.providers if runtime else [],
        "provider_fallback": runtime.fell_back if runtime else False,
        **facts,
    }


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(codecs.dump_json(body), status_code=status, media_type=codecs.JSON)


async def list_models(repository: RepositoryDep) -> Response:
    """Every package found, available or not, with its status, execution provider and manifest facts."""
    models = [describe(entry, repository) for entry in repository.entries()]
    return _json({"default_model": repository.default_name, "models": models})


async def model_versions(model: ModelName, repository: RepositoryDep) -> Response:
    """Every version of one model; `default_version` is the one served when a request names none."""
    default = repository.find(model)
    versions = [describe(entry, repository) for entry in repository.entries() if entry.name == model]
    return _json({"name": model, "default_version": default.version, "versions": versions})


async def model_version(model: ModelName, version: ModelVersion, repository: RepositoryDep) -> Response:
    """One version of one model."""
    return _json(describe(repository.find(model, version), repository))


async def healthz() -> Response:
    """Liveness: the process answers. Says nothing about the models (see /readyz)."""
    return _json({"status": "alive"})


async def readyz(repository: RepositoryDep) -> Response:
    """Readiness: 200 once every package is loaded and warmed up (or found broken); 503 before."""
    states = {f"{entry.name}/{entry.version}": entry.status for entry in repository.entries()}
    if not repository.ready:
        loading = [name for name, status in states.items() if status == "loading"]
        raise ServiceError(503, "not_ready", f"still loading: {loading}")
    return _json({"status": "ready", "models": states})


async def prometheus(request: Request, repository: RepositoryDep) -> Response:
    """Requests, errors and latency per model and operation; batch sizes, queue and compute time per graph."""
    families = list(request.app.state.request_stats.families())
    families += [f for entry in repository.entries() if entry.runtime for f in entry.runtime.stats.families()]
    return Response(metrics.render(families), media_type="text/plain; version=0.0.4")


def catalog_router() -> APIRouter:
    router = APIRouter()
    router.add_api_route("/metrics", prometheus, methods=["GET"], tags=["health"])
    router.add_api_route("/healthz", healthz, methods=["GET"], tags=["health"])
    router.add_api_route("/readyz", readyz, methods=["GET"], tags=["health"], responses=_NOT_READY)
    router.add_api_route("/models", list_models, methods=["GET"], tags=["models"])
    router.add_api_route("/models/{model}", model_versions, methods=["GET"], tags=["models"], responses=_UNKNOWN)
    router.add_api_route(
        "/models/{model}/versions/{version}", model_version, methods=["GET"], tags=["models"], responses=_UNKNOWN
    )
    return router


_NOT_READY: dict[int | str, dict[str, Any]] = {503: {"model": schemas.ErrorBody, "description": "still loading"}}
_UNKNOWN: dict[int | str, dict[str, Any]] = {
    404: {"model": schemas.ErrorBody, "description": "unknown model or version"},
    422: {"model": schemas.ErrorBody, "description": "invalid request"},
}
