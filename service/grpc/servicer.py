"""The Open Inference Protocol's GRPCInferenceService: each RPC a thin translation to the registry and to
service.v2_infer, which V2 over HTTP calls too, so both give the same numbers, limits and messages.

Errors are the service's own (service.errors.ServiceError), sent as the gRPC status of their HTTP status
(STATUS_CODES) with the same message; an overloaded model's answer carries when to retry, as HTTP's
Retry-After does, in the trailing metadata `retry-after` (seconds) and `grpc-retry-pushback-ms` (the
header gRPC's own retry policy reads)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, NoReturn, TypeVar

import grpc
from fastapi import FastAPI

from service import payloads, tracing, v2_infer
from service.errors import ServiceError
from service.grpc import open_inference_pb2 as pb
from service.grpc import open_inference_pb2_grpc as pb_grpc
from service.grpc.codec import parse_request, render_response, slow_to_parse
from service.metrics import Metrics
from service.middleware import bearer_key, key_matches
from service.registry import Registry
from service.routes import deadline
from service.routes.repository import index_row
from service.settings import Settings

SERVER_NAME = "autoencoder-service"
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
UNAUTHORIZED = ServiceError(
    401, "unauthorized", "send an API key as metadata `authorization: Bearer KEY` or `x-api-key`"
)
Reply = TypeVar("Reply")
INFER_METHOD = "inference.GRPCInferenceService/ModelInfer"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, app: FastAPI) -> None:
        self.settings: Settings = app.state.settings
        self.registry: Registry = app.state.registry
        self.metrics: Metrics = app.state.metrics
        self.version: str = app.version
        self.api_keys = [key.encode() for key in self.settings.all_api_keys()]
        self.admin_keys = [key.encode() for key in self.settings.admin_keys]

    # --- health and metadata -----------------------------------------------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.registry.readiness()[0])

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> Any:
        async def ready() -> pb.ModelReadyResponse:
            # Not ready, not an error, for a name or version the registry does not know: what clients'
            # is_model_ready expects (V2 HTTP answers 404, which they read as not ready).
            try:
                entry = self.registry.find(request.name or None, request.version or None)
            except ServiceError:
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=entry.serving)

        return await self._answer(context, ready, self.api_keys)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext) -> Any:
        async def metadata() -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(name=SERVER_NAME, version=self.version, extensions=v2_infer.EXTENSIONS)

        return await self._answer(context, metadata, self.api_keys)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> Any:
        async def metadata() -> pb.ModelMetadataResponse:
            runtime = self.registry.runtime(request.name or None, request.version or None)
            name = runtime.manifest.name
            entries = self.registry.entries()
            versions = [str(entry.version) for entry in entries if entry.name == name and entry.serving]
            inputs, outputs = v2_infer.tensors(runtime)
            return pb.ModelMetadataResponse(
                name=name,
                versions=versions,
                platform=v2_infer.PLATFORM,
                inputs=[pb.ModelMetadataResponse.TensorMetadata(**tensor) for tensor in inputs],
                outputs=[pb.ModelMetadataResponse.TensorMetadata(**tensor) for tensor in outputs],
            )

        return await self._answer(context, metadata, self.api_keys)

    # --- inference ---------------------------------------------------------------------------------------

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> Any:
        started, status = time.perf_counter(), 500
        metadata = context.invocation_metadata() or ()
        carrier = {key: value for key, value in metadata if key in tracing.CARRIED and isinstance(value, str)}
        with tracing.request(carrier, "grpc", INFER_METHOD) as record:
            record.method, record.operation, record.model = INFER_METHOD, "infer", request.model_name or None
            echoed = (("x-request-id", record.request_id),)
            try:
                self._check_key(context, self.api_keys)
                reply = await self._infer(request, context)
                status, record.status = 200, grpc.StatusCode.OK.name
                context.set_trailing_metadata(echoed)
                return reply
            except ServiceError as error:
                status = error.status
                record.status = STATUS_CODES.get(status, grpc.StatusCode.INTERNAL).name
                await abort(context, error, echoed)
            except asyncio.CancelledError:  # the client went away, or its deadline passed
                status, record.status = 499, grpc.StatusCode.CANCELLED.name
                raise
            finally:
                label = self.registry.metric_label(request.model_name or None)
                self.metrics.request_done(label, "infer", "grpc", status, time.perf_counter() - started)

    async def _infer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        settings = self.settings
        seconds = settings.request_timeout_s
        remaining = context.time_remaining()
        if remaining is not None:
            seconds = min(seconds, max(remaining, 0.0))
        async with deadline(seconds):
            with self.registry.lease(request.model_name or None, request.model_version or None) as runtime:
                with tracing.span("parse", media_type="application/grpc"):
                    parse = partial(parse_request, request)
                    parsed = await payloads.off_the_loop(parse) if slow_to_parse(request) else parse()
                outputs, parameters = await v2_infer.run(runtime, parsed, settings.max_batch_rows)
                manifest = runtime.manifest
                with tracing.span("encode", media_type="application/grpc"):
                    return render_response(parsed, manifest.name, manifest.version, outputs, parameters)

    # --- the model repository extension ------------------------------------------------------------------

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext) -> Any:
        async def index() -> pb.RepositoryIndexResponse:
            rows = [index_row(entry) for entry in self.registry.entries() if entry.serving or not request.ready]
            return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows])

        return await self._answer(context, index, self._admin())

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def load() -> pb.RepositoryModelLoadResponse:
            entries = await self.registry.load(request.model_name)
            if not any(entry.serving for entry in entries):
                reasons = "; ".join(f"{entry.label}: {entry.reason}" for entry in entries if entry.reason)
                raise ServiceError(400, "load_failed", f"model {request.model_name!r} cannot serve: {reasons}")
            return pb.RepositoryModelLoadResponse()

        return await self._answer(context, load, self._admin())

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def unload() -> pb.RepositoryModelUnloadResponse:
            await self.registry.unload(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await self._answer(context, unload, self._admin())

    def _admin(self) -> list[bytes] | None:
        """The admin keys, or None when the repository API is off."""
        return self.admin_keys or None

    # --- every call --------------------------------------------------------------------------------------

    async def _answer(
        self,
        context: grpc.aio.ServicerContext,
        work: Callable[[], Awaitable[Reply]],
        keys: list[bytes] | None,
    ) -> Reply:
        """`work`'s reply once the caller's key is checked against `keys` (none asked when empty; the call is
        refused when None: an API that is off); a ServiceError becomes the call's status."""
        try:
            self._check_key(context, keys)
            return await work()
        except ServiceError as error:
            await abort(context, error)

    def _check_key(self, context: grpc.aio.ServicerContext, keys: list[bytes] | None) -> None:
        if keys is None:
            raise ServiceError(404, "not_found", "the repository API is off: set AE_ADMIN_KEYS to turn it on")
        if not keys:
            return
        metadata = {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
        given = [bearer_key(metadata.get("authorization", "").encode()), metadata.get("x-api-key", "").encode()]
        if not key_matches([key for key in given if key], keys):
            raise UNAUTHORIZED


async def abort(
    context: grpc.aio.ServicerContext, error: ServiceError, trailing: tuple[tuple[str, str], ...] = ()
) -> NoReturn:
    """Ends the call with the error's status and message (grpc's abort raises), and `trailing` metadata."""
    code = STATUS_CODES.get(error.status, grpc.StatusCode.INTERNAL)
    retry_after = (error.headers or {}).get("Retry-After")
    if retry_after is not None:
        pushback = str(int(float(retry_after) * 1000))
        trailing = (*trailing, ("retry-after", retry_after), ("grpc-retry-pushback-ms", pushback))
    if trailing:
        context.set_trailing_metadata(trailing)
    await context.abort(code, error.message)
    raise AssertionError("grpc's abort raises")
