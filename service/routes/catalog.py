"""What serves and how it is doing: GET /models, score monitoring, liveness, readiness and Prometheus
metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Path, Request, Response

from service import codecs, schemas
from service.errors import ServiceError
from service.metrics import CONTENT_TYPE
from service.registry import Entry, Registry
from service.routes import ServiceRoute


# Dependencies are `async def`: FastAPI runs plain `def` ones in a thread pool.
async def get_registry(request: Request) -> Registry:
    return request.app.state.registry


ModelName = Annotated[str, Path(description="model name", examples=["mnist-dense"])]
ModelVersion = Annotated[str, Path(description="model version", examples=["1"])]
RegistryDep = Annotated[Registry, Depends(get_registry)]


def describe(entry: Entry, registry: Registry) -> dict[str, Any]:
    """What GET /models says of one package: status, providers, and the manifest's facts."""
    runtime = entry.runtime
    facts = {}
    if entry.manifest is not None:
        facts = entry.manifest.model_dump(
            mode="json",
            exclude={
                "name": True,
                "version": True,
                "files": True,
                "latent": {"mean", "cov"},
                "score": {"quantiles", "feature_shares"},
            },
        )
        facts["latent"]["prior"] = entry.manifest.prior
        # The curve itself is a thousand numbers; whether the answers carry percentiles is what a client needs.
        facts["score"]["percentiles"] = entry.manifest.score.quantiles is not None
    return {
        "name": entry.name,
        "version": entry.version,
        "default": entry.version == registry.default_version(entry.name),
        "status": entry.status,
        "reason": entry.reason,
        "requested_providers": list(registry.sessions.providers),
        "providers": runtime.providers if runtime else [],
        "provider_fallback": runtime.fell_back if runtime else False,
        **facts,
    }


def json_response(body: Any, status: int = 200) -> Response:
    return Response(codecs.dump_json(body), status_code=status, media_type=codecs.JSON)


async def list_models(registry: RegistryDep) -> Response:
    """Every package found, serving or not, with its status, execution provider and manifest facts; and the
    folders the last scan could not list (`"."` for the models folder, else a model's folder), with why."""
    models = [describe(entry, registry) for entry in registry.entries()]
    return json_response({"default_model": registry.default_name, "models": models, "unreadable": registry.unreadable})


async def model_versions(model: ModelName, registry: RegistryDep) -> Response:
    """Every version of one model; `default_version` (the highest that serves) answers requests naming none."""
    registry.find(model)
    versions = [describe(entry, registry) for entry in registry.entries() if entry.name == model]
    return json_response({"name": model, "default_version": registry.default_version(model), "versions": versions})


async def model_version(model: ModelName, version: ModelVersion, registry: RegistryDep) -> Response:
    """One version of one model."""
    return json_response(describe(registry.find(model, version), registry))


async def monitoring(model: ModelName, registry: RegistryDep) -> Response:
    """Score monitoring of the model's default version over the window, all workers merged: anomaly rate
    against the expected rate, PSI and KS of the score distribution against the normal validation scores,
    the status (ok, warning, drift; no_data before enough rows), and for tables which features carry the
    error (docs/monitoring.md)."""
    # Merging every worker's window and testing it takes milliseconds: off the event loop.
    return json_response(await to_thread.run_sync(_monitoring, registry, model, None))


async def version_monitoring(model: ModelName, version: ModelVersion, registry: RegistryDep) -> Response:
    """Score monitoring of one version of the model (as /models/{model}/monitoring)."""
    return json_response(await to_thread.run_sync(_monitoring, registry, model, version))


def _monitoring(registry: Registry, model: str, version: str | None) -> dict[str, Any]:
    runtime = registry.runtime(model, version)
    recorder = runtime.monitor
    if recorder is None:
        why = (
            "monitoring is off (monitor-window 0)"
            if not registry.metrics.monitoring.window.on
            else "the package stores no score curve (score.quantiles): its scores have no reference"
        )
        return {"model": runtime.manifest.name, "version": runtime.manifest.version, "status": "off", "reason": why}
    return registry.metrics.monitoring.report(recorder)


async def healthz() -> Response:
    """Liveness: the process answers. Says nothing about the models (see /readyz)."""
    return json_response({"status": "alive"})


async def readyz(registry: RegistryDep) -> Response:
    """Readiness: 200 once the packages found at start-up are loaded (or found broken) and at least one model
    serves; 503 before, and whenever no model serves."""
    ready, why = registry.readiness()
    if not ready:
        raise ServiceError(503, "not_ready", why)
    return json_response({"status": "ready", "models": {entry.label: entry.status for entry in registry.entries()}})


async def prometheus(request: Request) -> Response:
    """Requests, errors and latency per model and operation; batch sizes, queue and compute time per graph;
    package loads by outcome; the default version of each model."""
    return Response(await request.app.state.metrics.scrapes.latest(), media_type=CONTENT_TYPE)


_NOT_READY: dict[int | str, dict[str, Any]] = {503: {"model": schemas.ErrorBody, "description": "not ready"}}
_UNKNOWN: dict[int | str, dict[str, Any]] = {
    404: {"model": schemas.ErrorBody, "description": "unknown model or version"},
    422: {"model": schemas.ErrorBody, "description": "invalid request"},
}
_METRICS: dict[int | str, dict[str, Any]] = {
    200: {"description": "Prometheus text format", "content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}
}


def register(router: APIRouter) -> None:
    routes: list[tuple[str, Callable[..., Awaitable[Response]], str, dict[int | str, dict[str, Any]] | None]] = [
        ("/metrics", prometheus, "health", _METRICS),
        ("/healthz", healthz, "health", None),
        ("/readyz", readyz, "health", _NOT_READY),
        ("/models", list_models, "models", None),
        ("/models/{model}", model_versions, "models", _UNKNOWN),
        ("/models/{model}/versions/{version}", model_version, "models", _UNKNOWN),
        ("/models/{model}/monitoring", monitoring, "monitoring", _UNKNOWN | _NOT_READY),
        ("/models/{model}/versions/{version}/monitoring", version_monitoring, "monitoring", _UNKNOWN | _NOT_READY),
    ]
    for path, endpoint, tag, responses in routes:
        router.add_api_route(
            path, endpoint, methods=["GET"], tags=[tag], responses=responses, route_class_override=ServiceRoute
        )
