"""The FastAPI application: settings in, routes, error handling and the model repository wired up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import anyio
from anyio import to_thread
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ServiceError, install_error_handlers
from service.metrics import RequestMetrics, RequestStats
from service.repository import Repository
from service.routes import catalog_router, inference_router, inference_routes
from service.runtime import SessionConfig
from service.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    """The app, with nothing loaded yet: its lifespan discovers the packages and loads them in the
    background, so /healthz answers at once and /readyz turns 200 when every model is warm."""
    sessions = SessionConfig(
        providers=tuple(settings.execution_providers()),
        intra_op_threads=settings.intra_op_threads,
        inter_op_threads=settings.inter_op_threads,
        batch_rows=settings.batch_rows,
        batch_wait_s=settings.batch_wait_ms / 1000,
        batch_in_flight=settings.batch_in_flight,
    )
    app = FastAPI(
        title="Autoencoder service",
        summary="Encode, decode, reconstruct, score and generate with autoencoder model packages.",
        version="1",
        lifespan=_lifespan,
    )
    app.state.settings = settings
    repository = app.state.repository = Repository(settings.models_dir, sessions, settings.default_model)
    app.state.request_stats = RequestStats()
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, stats=app.state.request_stats, default_model=lambda: repository.default_name)
    app.include_router(catalog_router())
    app.router.routes.extend(inference_routes())
    app.include_router(inference_router())
    return app


def app_from_environment() -> FastAPI:
    """The app of `Settings()` read from AE_* variables: what each uvicorn worker process builds."""
    return create_app(Settings())  # type: ignore[call-arg]  # every field has a default or an AE_* variable


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    repository: Repository = app.state.repository
    repository.discover()
    async with anyio.create_task_group() as tasks:
        # Loading runs in a thread: onnxruntime releases the GIL, and the event loop stays free for probes.
        tasks.start_soon(partial(to_thread.run_sync, repository.load, abandon_on_cancel=True))
        yield
        tasks.cancel_scope.cancel()


class BodyLimit:
    """Refuses request bodies over `max_bytes` with 413, by Content-Length up front or by counting the
    stream (chunked uploads have no Content-Length). The error is raised where the body is read, so the
    one error handler renders it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if max(received, int(declared) if declared.isdigit() else 0) > self.max_bytes:
                raise ServiceError(413, "body_too_large", f"the request body exceeds {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)
