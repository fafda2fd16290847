"""The FastAPI application: wiring only. Settings in; the repository (disk), the registry (what serves),
the metrics, the middleware every route passes through, and one router per protocol."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, Request, Response, params
from fastapi.openapi.utils import get_openapi

from service import codecs, images, memory, schemas
from service.errors import install_error_handlers
from service.manifest import Manifest
from service.metrics import Metrics
from service.middleware import ApiKeys, BodyLimit, RequestMetrics, RequestTracing
from service.monitoring import Window
from service.pacing import Paced
from service.registry import Registry
from service.repository import Repository
from service.routes import catalog, repository, rest, v2, web
from service.runtime import SessionConfig
from service.settings import Settings


def create_app(settings: Settings, dependencies: Sequence[params.Depends] = ()) -> FastAPI:
    """The app, with nothing loaded yet: its lifespan scans the models folder and loads the packages in the
    background (so /healthz answers at once and /readyz turns 200 once they are settled), then polls it.
    `dependencies` run before every route (e.g. an embedding application's own authentication)."""
    memory.configure()
    sessions = SessionConfig(
        providers=tuple(settings.execution_providers()),
        intra_op_threads=settings.onnxruntime_threads(),
        inter_op_threads=settings.inter_op_threads,
        batch_rows=settings.batch_rows,
        batch_wait_s=settings.batch_wait_ms / 1000,
        batch_in_flight=settings.batch_in_flight,
        max_queue_wait_s=settings.max_queue_wait_ms / 1000,
    )
    app = FastAPI(
        title="Autoencoder service",
        summary="Encode, decode, reconstruct, score and generate with autoencoder model packages.",
        version="1",
        lifespan=_lifespan,
        dependencies=list(dependencies),
        # service.routes.web serves both from local assets instead of a CDN.
        docs_url=None,
        redoc_url=None,
        # Served below from a cache: FastAPI's own route writes the document's JSON again on every call.
        openapi_url=None,
    )
    metrics = app.state.metrics = Metrics(Window.parse(settings.monitor_window))
    registry = Registry(Repository(settings.models_dir), sessions, metrics, settings.default_model)
    app.state.settings, app.state.registry = settings, registry
    app.state.pixel_budget = images.PixelBudget(settings.max_pixels_in_flight)
    install_error_handlers(app)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_body_bytes,
        timeout_s=settings.body_timeout_s,
        max_bytes_in_flight=settings.max_body_bytes_in_flight,
    )
    app.add_middleware(RequestMetrics, metrics=metrics, registry=registry)
    # Added late, so it runs early: a request without a key goes no further.
    app.add_middleware(ApiKeys, keys=settings.all_api_keys(), metrics_need_key=settings.metrics_need_key)
    # Outermost: every request gets its id, span and log line, refused ones too.
    app.add_middleware(RequestTracing)
    # Routes go straight into the app's router: an included router costs a route lookup of its own per
    # request (about a quarter of a one-row request). Inference first: routes are matched in order.
    for protocol in (rest, v2, catalog, repository, web):
        protocol.register(app.router)
    app.state.openapi = schemas.ServedDocument(lambda manifests, default: _openapi(app, manifests, default))
    app.state.openapi_turns = Paced(OPENAPI_GAP_S)
    app.openapi = lambda: _served_document(app).document  # type: ignore[method-assign]  # FastAPI's documented way
    app.openapi_url = OPENAPI_URL  # where /docs and /redoc fetch it (service.routes.web)
    app.router.add_route(OPENAPI_URL, _openapi_json, include_in_schema=False)
    return app


OPENAPI_URL = "/openapi.json"
# At most 50 answers a second per worker: a page or a client generator fetches the document once, and a
# client asking in a loop must not take the event loop from inference (even cached, an answer is 80-150 KB).
OPENAPI_GAP_S = 0.02


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    registry: Registry = app.state.registry
    interval = app.state.settings.reload_interval
    await registry.discover()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(registry.refresh)
        if interval > 0:
            tasks.start_soon(registry.poll, interval)
        yield
        tasks.cancel_scope.cancel()


def _openapi(app: FastAPI, manifests: list[Manifest], default_model: str | None) -> dict[str, Any]:
    """The OpenAPI document of the one route table, with request examples from the models that serve."""
    document = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    schemas.add_served_models(document, manifests, default_model, app.state.settings.max_batch_rows)
    return document


def _served_document(app: FastAPI) -> schemas.ServedDocument:
    """The document for the models that serve now: models come and go, so it is checked on every call, and
    built again when they changed."""
    registry: Registry = app.state.registry
    manifests = [entry.manifest for entry in registry.entries() if entry.serving and entry.manifest is not None]
    document: schemas.ServedDocument = app.state.openapi
    document.update(manifests, registry.default_name, len(app.routes))
    return document


async def _openapi_json(request: Request) -> Response:
    async with request.app.state.openapi_turns.turn():
        return Response(_served_document(request.app).body, media_type=codecs.JSON)
