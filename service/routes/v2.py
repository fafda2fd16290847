"""The Open Inference Protocol V2 (KServe V2, Triton's HTTP API): health, model metadata and readiness, and
infer, with the binary tensor data extension. One V2 model per package; its tensors:

    inputs   x  FP32 [-1, *row shape]      z  FP32 [-1, latent]          (exactly one of them per request)
    outputs  from x: z, z_logvar (a VAE), x_hat, score [-1], is_anomaly BOOL [-1], percentile [-1], sq_err,
             top_features BYTES [-1, k] and top_features_share [-1, k];  from z: x_hat

percentile is each score's percentile among the normal validation scores (packages that store the curve);
top_features names the k features (or pixel regions "top,left,bottom,right") with the largest squared
error, and top_features_share their share of the row's; k is the request's parameters.top_features
(default 3), and they are computed only when asked for by name.

Infer runs only the graphs the requested outputs need, through the data plane and batchers the REST routes
use, so both protocols give the same numbers for the same rows. Errors are `{"error": "message"}`
(service.errors renders every /v2 path that way)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response

from service import admission, bodies, codecs, dataplane, payloads, schemas, v2_codec
from service.errors import ServiceError
from service.manifest import GRAPH_ROLES
from service.registry import Registry
from service.routes import deadline, route_class
from service.routes.catalog import json_response
from service.runtime import ModelRuntime
from service.v2_codec import HEADER_LENGTH, InferRequest, bad, parse_request, render_response

PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data", "model_repository"]
ENCODER_OUTPUTS = {"z", "z_logvar"}
SCORER_OUTPUTS = {"x_hat", "score", "is_anomaly", "percentile", "sq_err", "top_features", "top_features_share"}
ON_REQUEST = ("top_features", "top_features_share")  # never in the default "every output"
TOP_FEATURES = 3
DATATYPES = {"is_anomaly": "BOOL", "top_features": "BYTES"}


def _tensors(runtime: ModelRuntime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(inputs, outputs) as model metadata lists them: name, datatype, shape with -1 for the batch."""
    manifest = runtime.manifest
    row, latent = [-1, *manifest.row_shape], [-1, manifest.latent.dim]
    inputs = [{"name": "x", "datatype": "FP32", "shape": row}, {"name": "z", "datatype": "FP32", "shape": latent}]
    shapes = {"z": latent, "z_logvar": latent, "x_hat": row, "sq_err": row, "top_features": [-1, -1]}
    shapes["top_features_share"] = shapes["top_features"]
    outputs = [
        {"name": name, "datatype": DATATYPES.get(name, "FP32"), "shape": shapes.get(name, [-1])}
        for name in _outputs_from_x(runtime)
    ]
    return inputs, outputs


def _outputs_from_x(runtime: ModelRuntime) -> list[str]:
    logvar = ["z_logvar"] if runtime.manifest.architecture.variational else []
    percentile = ["percentile"] if runtime.manifest.score.quantiles is not None else []
    return ["z", *logvar, "x_hat", "score", "is_anomaly", *percentile, "sq_err", *ON_REQUEST]


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
    inputs, outputs = _tensors(runtime)
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
    inputs, outputs = _tensors(runtime)

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
            parsed = parse_request(raw, header_length, fast_only=True)
            if parsed is None:  # the slower way, in a thread when large (service.payloads.OFF_LOOP_BYTES)
                parse = partial(parse_request, raw, header_length)
                parsed = await payloads.off_the_loop(parse) if len(raw) > payloads.OFF_LOOP_BYTES else parse()
            assert parsed is not None
            outputs, parameters = await _run(runtime, parsed, state.settings.max_batch_rows)
            manifest = runtime.manifest
            body, headers = render_response(parsed, manifest.name, manifest.version, outputs, parameters)
    return Response(body, headers=headers)


def _admit_unread(request: Request, runtime: ModelRuntime, max_rows: int) -> None:
    # Which graphs run depends on the input and outputs the body names: before it is read, a request is
    # refused only when none of them could start its rows in time (as x rows, the widest: the fewest rows).
    width = admission.row_width(runtime, "scorer")
    admission.admit_unread(request, runtime, GRAPH_ROLES, width, max_rows, HEADER_LENGTH)


async def _run(
    runtime: ModelRuntime, request: InferRequest, max_rows: int
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    unknown = sorted(set(request.inputs) - {"x", "z"})
    if unknown or len(request.inputs) != 1:
        raise bad(f"give exactly one input, x (rows) or z (latents); got {sorted(request.inputs)}")
    [(name, array)] = request.inputs.items()
    shape = runtime.manifest.row_shape if name == "x" else (runtime.manifest.latent.dim,)
    rows = codecs.shaped(array.astype(np.float32, copy=False), shape, name, max_rows)
    offered = _outputs_from_x(runtime) if name == "x" else ["x_hat"]
    wanted = list(request.outputs) or [output for output in offered if output not in ON_REQUEST]
    refused = [output for output in wanted if output not in offered]
    if refused:
        raise bad(f"outputs {refused} cannot be computed from {name}; it gives {offered}")
    if name == "z":
        return {"x_hat": await dataplane.decode(runtime, rows)}, {}
    return await _from_rows(runtime, rows, wanted, request.parameters.get("top_features", TOP_FEATURES))


async def _from_rows(
    runtime: ModelRuntime, x: np.ndarray, wanted: list[str], k: object
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    jobs: dict[str, Awaitable[Any]] = {}
    if ENCODER_OUTPUTS & set(wanted):
        jobs["encoded"] = dataplane.encode(runtime, x, return_logvar="z_logvar" in wanted)
    if SCORER_OUTPUTS & set(wanted):
        jobs["scored"] = dataplane.score(runtime, x)
    # Both graphs at once when both are needed; one awaited alone skips gather's task overhead.
    results = await asyncio.gather(*jobs.values()) if len(jobs) > 1 else [await next(iter(jobs.values()))]
    done = dict(zip(jobs, results, strict=True))
    computed: dict[str, np.ndarray | None] = {}
    if "encoded" in done:
        computed |= {"z": done["encoded"].latents, "z_logvar": done["encoded"].logvar}
    if "scored" in done:
        scored: dataplane.Scored = done["scored"]
        computed |= {
            "x_hat": scored.reconstructions,
            "score": scored.scores,
            "is_anomaly": scored.is_anomaly,
            "percentile": scored.percentiles,
            "sq_err": scored.sq_err,
        }
        if set(ON_REQUEST) & set(wanted):
            computed |= _top_features(runtime, scored.sq_err, k)
    outputs = {name: array for name in wanted if (array := computed[name]) is not None}
    return outputs, {"threshold": runtime.manifest.score.threshold}


def _top_features(runtime: ModelRuntime, sq_err: np.ndarray, k: object) -> dict[str, np.ndarray]:
    k = codecs.integral(k)
    if type(k) is not int or k < 1:
        raise bad(f"parameters.top_features must be a positive integer, got {k!r}")
    top = dataplane.top_features(runtime, sq_err, k)
    if top.names is not None:
        labels = np.array(top.names, dtype=object)
    else:
        assert top.regions is not None
        labels = np.array([",".join(map(str, region)) for region in top.regions.tolist()], dtype=object)
    return {"top_features": labels[top.parts], "top_features_share": top.share.astype(np.float32)}


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
