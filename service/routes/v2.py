"""The Open Inference Protocol V2 over HTTP (KServe V2, Triton's HTTP API): health, model metadata and
readiness, and infer, with the binary tensor data extension. One V2 model per package; its tensors and what
infer computes are service.v2_infer's, shared with gRPC. Errors are `{"error": "message"}` (service.errors
renders every /v2 path that way)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from fastapi import APIRouter, Request, Response

from service import admission, bodies, payloads, schemas, tracing, v2_codec
from service.errors import ServiceError
from service.manifest import GRAPH_ROLES
from service.registry import Registry
from service.routes import deadline, route_class
from service.routes.catalog import json_response
from service.runtime import ModelRuntime
from service.v2_codec import HEADER_LENGTH, parse_request, render_response
from service.v2_infer import EXTENSIONS, PLATFORM, run, tensors


def _registry(request: Request) -> Registry:
    return request.app.state.registry


def _runtime(request: Request) -> ModelRuntime:
    path = request.path_params
    return _registry(request).runtime(path["model"], path.get("version"))


async def server_metadata(request: Request) -> Response:
    """The server's name, version and protocol extensions."""
    return json_response({"name": "autoencoder-service", "version": request.app.version, "extensions": EXTENSIONS})


async def live(request: Request) -> Response:
    """200 while the process runs."""
    return json_response({"live": True})


async def ready(request: Request) -> Response:
    """200 when the service is ready (as /readyz), else 503 with the reason."""
    is_ready, why = _registry(request).readiness()
    if not is_ready:
        raise ServiceError(503, "not_ready", why)
    return json_response({"ready": True})


async def model_metadata(request: Request) -> Response:
    """The model's versions that serve, and its input and output tensors."""
    runtime = _runtime(request)
    name = runtime.manifest.name
    versions = [str(entry.version) for entry in _registry(request).entries() if entry.name == name and entry.serving]
    inputs, outputs = tensors(runtime)
    body = {"name": name, "versions": versions, "platform": PLATFORM, "inputs": inputs, "outputs": outputs}
    return json_response(body)


async def model_ready(request: Request) -> Response:
    """200 when the model (version) serves; 503 while it loads, is unloaded or broken; 404 if unknown."""
    runtime = _runtime(request)
    return json_response({"name": runtime.manifest.name, "version": str(runtime.manifest.version), "ready": True})


async def model_config(request: Request) -> Response:
    """Triton's model configuration, for tools that read it (perf_analyzer): max_batch_size and the tensors
    without their batch axis."""
    runtime = _runtime(request)
    inputs, outputs = tensors(runtime)

    def config(tensor: dict[str, Any]) -> dict[str, Any]:
        return {"name": tensor["name"], "data_type": f"TYPE_{tensor['datatype']}", "dims": tensor["shape"][1:]}

    return json_response(
        {
            "name": runtime.manifest.name,
            "platform": PLATFORM,
            "max_batch_size": request.app.state.settings.max_batch_rows,
            "input": [config(tensor) for tensor in inputs],
            "output": [config(tensor) for tensor in outputs],
        }
    )


async def infer(request: Request) -> Response:
    """Runs the model on x (any requested outputs; all when none are named) or on z (x_hat)."""
    path, state = request.path_params, request.app.state
    async with deadline(state.settings.request_timeout_s):
        with state.registry.lease(path["model"], path.get("version")) as runtime:
            _admit_unread(request, runtime, state.settings.max_batch_rows)
            header_length, manifest = request.headers.get(HEADER_LENGTH), runtime.manifest
            max_rows = state.settings.max_batch_rows
            declared = payloads.declared_length(request)
            small = declared is not None and declared <= payloads.SCAN_FROM_BYTES
            check = None if small else v2_codec.scan(header_length, manifest.row_shape, manifest.latent.dim, max_rows)
            raw = await bodies.read(request.stream(), check)
            media = request.headers.get("content-type", "application/json")
            with tracing.span("parse", media_type=media):
                parsed = parse_request(raw, header_length, fast_only=True)
                if parsed is None:  # the slower way, in a thread when large (service.payloads.OFF_LOOP_BYTES)
                    parse = partial(parse_request, raw, header_length)
                    parsed = await payloads.off_the_loop(parse) if len(raw) > payloads.OFF_LOOP_BYTES else parse()
            assert parsed is not None
            outputs, parameters = await run(runtime, parsed, state.settings.max_batch_rows)
            manifest = runtime.manifest
            with tracing.span("encode", media_type=media):
                body, headers = render_response(parsed, manifest.name, manifest.version, outputs, parameters)
    return Response(body, headers=headers)


def _admit_unread(request: Request, runtime: ModelRuntime, max_rows: int) -> None:
    # Which graphs run depends on the input and outputs the body names: before it is read, a request is
    # refused only when none of them could start its rows in time (as x rows, the widest: the fewest rows).
    width = admission.row_width(runtime, "scorer")
    admission.admit_unread(request, runtime, GRAPH_ROLES, width, max_rows, HEADER_LENGTH)


_MODEL_PREFIXES = {"/v2/models/{model}": "by-name", "/v2/models/{model}/versions/{version}": "by-version"}


def register(router: APIRouter) -> None:
    def add(
        path: str,
        endpoint: Callable[[Request], Awaitable[Response]],
        method: str = "GET",
        operation: str | None = None,
        **extra: Any,
    ) -> None:
        router.add_api_route(
            path,
            endpoint,
            methods=[method],
            tags=["open inference protocol v2"],
            route_class_override=route_class("v2", operation),
            **extra,
        )

    model_errors = {400: "a malformed version", 404: "unknown model or version", 503: "no version serves"}
    infer_errors = schemas.v2_errors(
        model_errors
        | {
            400: "a malformed request: the message says what is wrong",
            408: "the body did not arrive within AE_BODY_TIMEOUT_S",
            413: "body or batch too large",
            503: "no version serves, or the service is overloaded (Retry-After)",
            504: "the request took longer than AE_REQUEST_TIMEOUT_S",
        }
    )
    # Infer first: routes are matched in order, and it is the one under load.
    for prefix, style in _MODEL_PREFIXES.items():
        extra = schemas.v2_openapi(style, infer=True)
        add(
            f"{prefix}/infer",
            infer,
            "POST",
            "infer",  # the operation label of the request metrics (service.middleware)
            name=f"infer-{style}",
            operation_id=f"infer_{style.replace('-', '_')}",
            openapi_extra=extra,
            responses=infer_errors,
        )
    add("/v2", server_metadata)
    add("/v2/health/live", live)
    add("/v2/health/ready", ready, responses=schemas.v2_errors({503: "not ready: no model serves"}))
    for prefix, style in _MODEL_PREFIXES.items():
        extra, errors = schemas.v2_openapi(style, infer=False), schemas.v2_errors(model_errors)
        add(prefix, model_metadata, name=f"metadata_{style}", openapi_extra=extra, responses=errors)
        add(f"{prefix}/ready", model_ready, name=f"ready_{style}", openapi_extra=extra, responses=errors)
        add(f"{prefix}/config", model_config, name=f"config_{style}", openapi_extra=extra, responses=errors)
