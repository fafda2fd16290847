"""The simple REST protocol: parse the request (service.payloads), call the data plane, write the answer.

Every operation is served three ways: `/encode?model=NAME&version=V`, `/models/NAME/encode` and
`/models/NAME/versions/V/encode`; without a model, the default model at its default version (the highest
that serves)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response

from service import admission, dataplane, schemas
from service.payloads import Pixels, Result, RowsRequest, read_json, read_rows, respond
from service.routes import deadline, route_class
from service.runtime import ModelRuntime
from service.settings import Settings

Handler = Callable[[Request, ModelRuntime, Settings], Awaitable[Response]]


def _inputs(settings: Settings, runtime: ModelRuntime, **options: tuple[type, Any]) -> RowsRequest:
    return RowsRequest(
        key="inputs",
        row_shape=runtime.manifest.row_shape,
        max_rows=settings.max_batch_rows,
        options=options,
        uploads=True,
        max_image_pixels=settings.max_image_pixels,
        max_request_pixels=settings.max_request_pixels,
        feature_names=_names(runtime),
        pixels=_pixels(runtime),
        label_column=runtime.manifest.training.data.label_column,
    )


def _pixels(runtime: ModelRuntime) -> Pixels | None:
    return Pixels(*runtime.manifest.normalisation()) if runtime.manifest.input.kind == "image" else None


def _names(runtime: ModelRuntime) -> tuple[str, ...] | None:
    names = runtime.manifest.input.feature_names
    return tuple(names) if names is not None else None


def _latents(settings: Settings, runtime: ModelRuntime) -> RowsRequest:
    return RowsRequest(key="latents", row_shape=(runtime.manifest.latent.dim,), max_rows=settings.max_batch_rows)


def _answer(runtime: ModelRuntime, **body: Any) -> dict[str, Any]:
    return {"model": runtime.manifest.name, "version": runtime.manifest.version, **body}


def _shown(runtime: ModelRuntime, body: dict[str, Any], main: str) -> Result:
    """A result whose main array an image model can also answer as a PNG grid."""
    return Result(body, main, body[main], _pixels(runtime))


async def encode(request: Request, runtime: ModelRuntime, settings: Settings) -> Response:
    """Latent vectors of the rows (a VAE: the mean; `return_logvar` adds the log-variance)."""
    rows = await read_rows(request, _inputs(settings, runtime, return_logvar=(bool, False)))
    encoded = await dataplane.encode(runtime, rows.x, rows.options["return_logvar"])
    extra = {"logvar": encoded.logvar} if encoded.logvar is not None else {}
    return respond(request, Result(_answer(runtime, latents=encoded.latents, **extra), "latents"))


async def decode(request: Request, runtime: ModelRuntime, settings: Settings) -> Response:
    """Reconstructions (raw scale) decoded from latent vectors; image models answer PNG on request."""
    latents = await read_rows(request, _latents(settings, runtime))
    x_hat = await dataplane.decode(runtime, latents.x)
    body = _answer(runtime, reconstructions=x_hat)
    return respond(request, _shown(runtime, body, "reconstructions"))


async def reconstruct(request: Request, runtime: ModelRuntime, settings: Settings) -> Response:
    """Reconstructions of the rows and their anomaly scores; image models answer PNG on request."""
    rows = await read_rows(request, _inputs(settings, runtime))
    scored = await dataplane.reconstruct(runtime, rows.x)
    body = _answer(runtime, reconstructions=scored.reconstructions, scores=scored.scores)
    return respond(request, _shown(runtime, body, "reconstructions"))


async def score(request: Request, runtime: ModelRuntime, settings: Settings) -> Response:
    """Per-row anomaly scores (mean squared error in normalised space), the threshold, and is_anomaly; rows
    that carry the model's label column also get how well the scores separate its classes (`labels`)."""
    spec = _inputs(settings, runtime, return_sq_err=(bool, False), top_features=(int, 0))
    rows = await read_rows(request, spec)
    options = rows.options
    scored = await dataplane.score(runtime, rows.x)
    extra: dict[str, Any] = {} if scored.percentiles is None else {"percentiles": scored.percentiles}
    if rows.labels is not None:
        extra["labels"] = (await dataplane.separation(runtime, scored.scores, rows.labels)).as_dict()
    if options["return_sq_err"]:
        extra["sq_err"] = scored.sq_err
    if options["top_features"]:
        extra["top_features"] = _top_features(dataplane.top_features(runtime, scored.sq_err, options["top_features"]))
    body = _answer(runtime, scores=scored.scores, threshold=scored.threshold, is_anomaly=scored.is_anomaly, **extra)
    return respond(request, Result(body, "scores"))


def _top_features(top: dataplane.TopFeatures) -> list[list[dict[str, Any]]]:
    """Each row's parts as objects: {feature, index} for tables, {region} for images, with sq_err and share."""
    rows = []
    for parts, sq_errs, shares in zip(top.parts.tolist(), top.sq_err.tolist(), top.share.tolist(), strict=True):
        rows.append(
            [
                _part(top, part) | {"sq_err": sq_err, "share": share}
                for part, sq_err, share in zip(parts, sq_errs, shares, strict=True)
            ]
        )
    return rows


def _part(top: dataplane.TopFeatures, part: int) -> dict[str, Any]:
    if top.names is not None:
        return {"feature": top.names[part], "index": part}
    assert top.regions is not None
    return {"region": top.regions[part].tolist()}


async def generate(request: Request, runtime: ModelRuntime, settings: Settings) -> Response:
    """n samples decoded from the latent prior (a VAE: N(0, I); else N(mean, cov) of the training rows)."""
    options = await read_json(request, ["n"], {"seed": (int, None)})
    generated = await dataplane.generate(runtime, options["n"], options["seed"], settings.max_batch_rows)
    body = _answer(runtime, latents=generated.latents, samples=generated.samples)
    return respond(request, _shown(runtime, body, "samples"))


@dataclass(frozen=True)
class Operation:
    handler: Handler
    graph: str  # the graph its rows run through, asked for room before the body is read
    uploads: bool  # takes image uploads (multipart)
    png: bool  # can answer image/png


OPERATIONS: dict[str, Operation] = {
    "encode": Operation(encode, "encoder", uploads=True, png=False),
    "decode": Operation(decode, "decoder", uploads=False, png=True),
    "reconstruct": Operation(reconstruct, "scorer", uploads=True, png=True),
    "score": Operation(score, "scorer", uploads=True, png=False),
    "generate": Operation(generate, "decoder", uploads=False, png=True),
}
# path prefix -> how the route names its model
STYLES = {"": "default", "/models/{model}": "by-name", "/models/{model}/versions/{version}": "by-version"}


def _endpoint(operation: Operation) -> Callable[[Request], Awaitable[Response]]:
    """The handler with the runtime the request names, leased from the registry for the request's duration;
    refused before its body is read when the model's graph has no room for it (service.admission)."""

    async def endpoint(request: Request) -> Response:
        state, path, query = request.app.state, request.path_params, request.query_params
        model, version = path.get("model") or query.get("model"), path.get("version") or query.get("version")
        async with deadline(state.settings.request_timeout_s):
            with state.registry.lease(model, version) as runtime:
                width = admission.row_width(runtime, operation.graph)
                max_rows = state.settings.max_batch_rows
                with admission.room_for_body(request, runtime, operation.graph, width, max_rows):
                    return await operation.handler(request, runtime, state.settings)

    endpoint.__doc__ = operation.handler.__doc__
    return endpoint


def register(router: APIRouter) -> None:
    for prefix, style in STYLES.items():
        for name, operation in OPERATIONS.items():
            router.add_api_route(
                f"{prefix}/{name}",
                _endpoint(operation),
                methods=["POST"],
                name=f"{name}-{style}",
                operation_id=f"{name}_{style.replace('-', '_')}",
                tags=["inference" if not prefix else f"inference ({style})"],
                route_class_override=route_class("rest", name),
                **schemas.openapi_for(name, style, operation.uploads, operation.png),
            )
