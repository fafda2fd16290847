"""The Open Inference Protocol's GRPCInferenceService: each RPC a thin translation to the registry and to
service.v2_infer, which V2 over HTTP calls too, so both give the same numbers, limits and messages.

Errors are the service's own (service.errors.ServiceError), sent as the gRPC status of their HTTP status
(STATUS_CODES) with the same message; an overloaded model's answer carries when to retry, as HTTP's
Retry-After does, in the trailing metadata `retry-after` (seconds) and `grpc-retry-pushback-ms` (the
header gRPC's own retry policy reads).

ModelInfer takes its message as bytes (registered so by `handlers`) and parses it itself: a large message in
a thread, so neither a 16 MiB request nor a small one made of a million map entries holds the event loop,
and a message that is not a ModelInferRequest is INVALID_ARGUMENT, like any other bad request. A refused
call's exception is ended before its status is sent, so the request and its arrays go with the call, not
with the garbage collector's next pass."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, NoReturn, TypeVar

import grpc
from fastapi import FastAPI
from google.protobuf.message import DecodeError

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
    401, "unauthorized", "send an API key as metadata `authorization: Bearer KEY` or `x-api-key: KEY`"
)
ADMIN_UNAUTHORIZED = ServiceError(401, "unauthorized", "send an admin key as metadata `authorization: Bearer KEY`")
# Longest model name and version looked up (the registry's names are far shorter): a longer one is unknown,
# and only its start is quoted back, in the message and in the request's log line.
MAX_NAME, MAX_VERSION, QUOTED = 256, 20, 60
SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
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
        self.calls = 0  # ModelInfer calls in progress

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
                entry = self.registry.find(*_model(request.name, request.version))
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
            runtime = self.registry.runtime(*_model(request.name, request.version))
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

    async def ModelInfer(self, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        started, status, model = time.perf_counter(), 500, ""
        metadata = context.invocation_metadata() or ()
        carrier = {key: value for key, value in metadata if key in tracing.CARRIED and isinstance(value, str)}
        with tracing.request(carrier, "grpc", INFER_METHOD) as record:
            record.method, record.operation = INFER_METHOD, "infer"
            echoed = (("x-request-id", record.request_id),)
            refused: ServiceError | None = None
            try:
                self._check_key(context, self.api_keys)
                request = await _message(raw)
                model = request.model_name
                record.model = model[:QUOTED] or None
                reply = await self._admitted(request, context)
                status, record.status = 200, grpc.StatusCode.OK.name
                context.set_trailing_metadata(echoed)
                return reply
            except ServiceError as error:
                refused, status = error, error.status
                record.status = STATUS_CODES.get(status, grpc.StatusCode.INTERNAL).name
            except asyncio.CancelledError:  # the client went away, or its deadline passed
                status, record.status = 499, grpc.StatusCode.CANCELLED.name
                raise
            finally:
                label = self.registry.metric_label(model[:MAX_NAME] or None)
                self.metrics.request_done(label, "infer", "grpc", status, time.perf_counter() - started)
            raw = request = None  # type: ignore[assignment]
            await abort(context, _ended(refused), echoed)

    async def _admitted(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> Any:
        """_infer, once there is room: calls are counted from when their message has arrived, so streams that
        never send one (or watch health) take no room from those that do."""
        limit = self.settings.grpc_max_concurrent_rpcs
        if self.calls >= limit:
            raise ServiceError(
                503, "overloaded", f"{limit} calls are in progress in this worker; retry", {"Retry-After": "1"}
            )
        self.calls += 1
        try:
            return await self._infer(request, context)
        finally:
            self.calls -= 1

    async def _infer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        settings = self.settings
        seconds, why = settings.request_timeout_s, None
        remaining = context.time_remaining()
        if remaining is not None and remaining < seconds:
            seconds, why = max(remaining, 0.0), "the call's deadline passed"
        name, version = _model(request.model_name, request.model_version)
        async with deadline(seconds, why):
            with self.registry.lease(name, version) as runtime:
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
            name, _ = _model(request.model_name, "")
            entries = await self.registry.load(name or "")
            if not any(entry.serving for entry in entries):
                reasons = "; ".join(f"{entry.label}: {entry.reason}" for entry in entries if entry.reason)
                raise ServiceError(400, "load_failed", f"model {name!r} cannot serve: {reasons}")
            return pb.RepositoryModelLoadResponse()

        return await self._answer(context, load, self._admin())

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def unload() -> pb.RepositoryModelUnloadResponse:
            name, _ = _model(request.model_name, "")
            await self.registry.unload(name or "")
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
        refused: ServiceError | None = None
        try:
            self._check_key(context, keys, admin=keys is not self.api_keys)
            return await work()
        except ServiceError as error:
            refused = error
        await abort(context, _ended(refused))

    def _check_key(self, context: grpc.aio.ServicerContext, keys: list[bytes] | None, admin: bool = False) -> None:
        """API keys as `authorization: Bearer KEY` or `x-api-key: KEY`; admin keys (the repository API, as
        over HTTP) as `authorization: Bearer KEY` only."""
        if keys is None:
            raise ServiceError(404, "not_found", "the repository API is off: set AE_ADMIN_KEYS to turn it on")
        if not keys:
            return
        metadata = {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
        given = [bearer_key(metadata.get("authorization", "").encode())]
        if not admin:
            given.append(metadata.get("x-api-key", "").encode())
        if not key_matches([key for key in given if key], keys):
            raise ADMIN_UNAUTHORIZED if admin else UNAUTHORIZED


def handlers(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    """The service's method handlers, as the generated add_GRPCInferenceServiceServicer_to_server makes them,
    but for ModelInfer, which gets its message as bytes."""
    methods = {}
    for method in SERVICE.methods:
        request, response = getattr(pb, method.input_type.name), getattr(pb, method.output_type.name)
        methods[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=None if method.name == "ModelInfer" else request.FromString,
            response_serializer=response.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(SERVICE.full_name, methods)


async def _message(raw: bytes) -> pb.ModelInferRequest:
    """The ModelInferRequest in `raw`, parsed in a thread when large; 400 when it is not one."""
    try:
        if len(raw) <= payloads.OFF_LOOP_BYTES:
            return pb.ModelInferRequest.FromString(raw)
        parsed: pb.ModelInferRequest = await payloads.off_the_loop(partial(pb.ModelInferRequest.FromString, raw))
        return parsed
    except DecodeError:
        raise ServiceError(400, "invalid_request", "the message is not a ModelInferRequest") from None


def _model(name: str, version: str) -> tuple[str | None, str | None]:
    """A request's model name and version as the registry looks them up (empty: the default); too long to
    be a name the registry knows, 404 quoting only their start."""
    if len(name) > MAX_NAME:
        raise ServiceError(404, "model_not_found", f"unknown model {name[:QUOTED]!r}... ({len(name)} characters)")
    if len(version) > MAX_VERSION:
        raise ServiceError(404, "version_not_found", f"unknown version {version[:QUOTED]!r}... of model {name!r}")
    return name or None, version or None


def _ended(error: ServiceError | None) -> ServiceError:
    """The error without its traceback and context, which hold the frames (and arrays) it was raised from."""
    assert error is not None
    error.__traceback__ = error.__context__ = error.__cause__ = None
    return error


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
