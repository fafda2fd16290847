"""Request and response shapes for the OpenAPI page (/docs) only.

Requests are never validated through these models: bodies go through orjson into numpy (service.codecs),
which is what keeps a batch of thousands of floats cheap. These classes only tell /docs what to show; the
request examples come from the models that serve, so "Try it out" sends what they accept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from service.codecs import CSV, JSON, MULTIPART, NPY, NPZ, PNG, RAW, dump_json
from service.manifest import Manifest

Rows = list[Any]


class EncodeRequest(BaseModel):
    inputs: Rows = Field(description="rows: flat feature vectors, or H x W [x C] nested lists for images")
    return_logvar: bool = Field(False, description="a VAE only: also return the log-variance")


class DecodeRequest(BaseModel):
    latents: Rows = Field(description="latent vectors, each of the model's latent size")


class ReconstructRequest(BaseModel):
    inputs: Rows


class ScoreRequest(BaseModel):
    inputs: Rows
    return_sq_err: bool = Field(False, description="also return the per-feature squared errors")
    top_features: int = Field(
        0,
        ge=0,
        description="also return, per row, the k features (tables) or 4 x 4 pixel regions (images) with the "
        "largest squared error, and their share of the row's",
    )


class GenerateRequest(BaseModel):
    n: int = Field(description="how many samples, 1 to the max-batch-rows setting")
    seed: int | None = Field(None, description="random seed; the same seed gives the same samples")


class UploadRequest(BaseModel):
    file: bytes = Field(description="a PNG, JPEG or BMP image; repeat the field for a batch")


class Answer(BaseModel):
    model: str
    version: int


class EncodeResponse(Answer):
    latents: list[list[float]]
    logvar: list[list[float]] | None = None


class DecodeResponse(Answer):
    reconstructions: Rows


class ReconstructResponse(Answer):
    reconstructions: Rows
    scores: list[float]


class Separation(BaseModel):
    """How well the scores separate the classes of the model's label column, for rows that carried it."""

    column: str = Field(description="the label column the model was trained with (training.data.label_column)")
    normal: int = Field(description="rows labelled normal (training.data.normal_label; without one, label 0)")
    anomalous: int = Field(description="rows labelled anomalous (any other label; without a normal label, 1)")
    unlabelled: int = Field(description="rows whose label is empty or missing")
    auroc: float | None = Field(description="AUROC of the scores over the labelled rows; null when `note` says why")
    note: str | None = Field(description="why there is no AUROC (too few rows of a class, or labels not understood)")


class ScoreResponse(Answer):
    scores: list[float]
    threshold: float
    is_anomaly: list[bool]
    percentiles: list[float] | None = Field(
        None, description="per row, the percentile (0-100) of its score among the normal validation rows' scores"
    )
    sq_err: Rows | None = None
    top_features: list[list[dict[str, Any]]] | None = None
    labels: Separation | None = Field(
        None, description="only when the rows carry the model's label column (named rows, or a CSV header)"
    )


class GenerateResponse(Answer):
    latents: list[list[float]]
    samples: Rows


class ErrorDetail(BaseModel):
    code: str = Field(examples=["invalid_shape"])
    message: str = Field(examples=["inputs has shape [1, 3]; expected one row of shape [5] or a batch ..."])


class ErrorBody(BaseModel):
    error: ErrorDetail


class V2ErrorBody(BaseModel):
    """The Open Inference Protocol's error: what Triton's and KServe's clients read."""

    error: str = Field(examples=["model 'x' not found"])


def v2_errors(reasons: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """`responses` of a /v2 route: each status with the protocol's error body."""
    return {status: {"model": V2ErrorBody, "description": why} for status, why in reasons.items()}


REQUESTS: dict[str, type[BaseModel]] = {
    "encode": EncodeRequest,
    "decode": DecodeRequest,
    "reconstruct": ReconstructRequest,
    "score": ScoreRequest,
    "generate": GenerateRequest,
}
RESPONSES: dict[str, type[BaseModel]] = {
    "encode": EncodeResponse,
    "decode": DecodeResponse,
    "reconstruct": ReconstructResponse,
    "score": ScoreResponse,
    "generate": GenerateResponse,
}
_ERRORS = {
    400: "malformed JSON",
    404: "unknown model or version",
    406: "the Accept header asks for a type this route cannot answer",
    413: "body, batch or image too large",
    415: "unsupported Content-Type",
    408: "the body did not arrive within AE_BODY_TIMEOUT_S",
    422: "wrong shape, non-numbers, NaN/Inf, empty batch, unknown or missing fields",
    503: "the model is loading or unavailable, or the service is overloaded (Retry-After)",
    504: "the request took longer than AE_REQUEST_TIMEOUT_S",
}


_MODEL = {"name": "model", "description": "model name; without it, the default model", "schema": {"type": "string"}}
_VERSION = {
    "name": "version",
    "description": "model version; without it, the highest version that serves",
    "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"},
}
# route style (service.routes.rest.STYLES) -> where it names its model
_PARAMETERS: dict[str, list[dict[str, Any]]] = {
    "default": [{**_MODEL, "in": "query"}, {**_VERSION, "in": "query"}],
    "by-name": [{**_MODEL, "in": "path", "required": True}],
    "by-version": [{**_MODEL, "in": "path", "required": True}, {**_VERSION, "in": "path", "required": True}],
}


def openapi_for(operation: str, style: str, uploads: bool, png: bool) -> dict[str, Any]:
    """`openapi_extra` and `responses` for one inference route: its parameters, the request body and every
    answer. The request examples are the served models' own (`add_examples`)."""
    content: dict[str, Any] = {JSON: {"schema": REQUESTS[operation].model_json_schema()}}
    binary = {"schema": {"type": "string", "format": "binary"}}
    if operation != "generate":
        content |= {NPY: binary, RAW: binary, CSV: {"schema": {"type": "string"}}}
    if uploads:
        content[MULTIPART] = {"schema": UploadRequest.model_json_schema()}
    success: dict[str, Any] = {
        "model": RESPONSES[operation],
        "description": "the result; application/x-npy and application/octet-stream carry the main array "
        "(X-Shape header), application/x-npz every array",
        "content": {NPY: binary, RAW: binary, NPZ: binary},
    }
    if png:
        success["content"][PNG] = binary
        success["description"] += "; with `Accept: image/png`, a grid of the images"
    responses: dict[int | str, dict[str, Any]] = {200: success}
    responses.update({status: {"model": ErrorBody, "description": why} for status, why in _ERRORS.items()})
    extra = {"parameters": _PARAMETERS[style], "requestBody": {"required": True, "content": content}}
    return {"openapi_extra": extra, "responses": responses}


_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string", "enum": ["x", "z"]},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}, "maxItems": 8},
        "datatype": {"type": "string", "enum": ["FP32", "FP64", "FP16", "UINT8", "INT32", "INT64"]},
        "data": {"type": "array", "description": "the values, row-major, flat or nested"},
        "parameters": {"type": "object", "description": "binary_data_size, with the binary extension"},
    },
}
V2_INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object", "description": "binary_data_output: answer every output as binary"},
        "inputs": {"type": "array", "items": _TENSOR, "minItems": 1, "maxItems": 1},
        "outputs": {
            "type": "array",
            "description": "z, z_logvar, x_hat, score, is_anomaly, sq_err (from x), x_hat (from z); none: all",
            "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
        },
    },
}


def v2_openapi(style: str, infer: bool) -> dict[str, Any]:
    """`openapi_extra` of a V2 model route: its path parameters and, for infer, the request body."""
    extra: dict[str, Any] = {"parameters": _PARAMETERS[style]}
    if infer:
        content = {JSON: {"schema": V2_INFER_REQUEST}, "application/octet-stream": {"schema": {"type": "string"}}}
        extra["requestBody"] = {"required": True, "content": content}
    return extra


def example_bodies(manifest: Manifest) -> dict[str, dict[str, Any]]:
    """A request body per operation that this model accepts: a row in the middle of its preprocessing's
    range (for images, mid-grey), and its latent mean."""
    offset, scale = manifest.normalisation()
    row = np.broadcast_to(offset + 0.5 * scale, manifest.row_shape).astype(np.float64).round(4).tolist()
    bodies: dict[str, dict[str, Any]] = {
        "encode": {"inputs": [row]},
        "decode": {"latents": [np.round(np.asarray(manifest.latent.mean, np.float64), 4).tolist()]},
        "reconstruct": {"inputs": [row]},
        "score": {"inputs": [row], "return_sq_err": False},
        "generate": {"n": 4, "seed": 0},
        "infer": {
            "inputs": [{"name": "x", "shape": [1, *manifest.row_shape], "datatype": "FP32", "data": [row]}],
            "outputs": [{"name": "score"}, {"name": "is_anomaly"}],
        },
    }
    if manifest.architecture.variational:
        bodies["encode"]["return_logvar"] = True
    return bodies


class ServedDocument:
    """The OpenAPI document and its JSON, built again only when what it describes changes: the models that
    serve, the default model, the routes. Building it takes 30-70 ms of the event loop and writing its JSON
    3 ms, too much to spend on every GET /openapi.json when any client may ask for it in a loop."""

    def __init__(self, build: Callable[[list[Manifest], str | None], dict[str, Any]]) -> None:
        self._build = build
        self._built_for: tuple[object, ...] | None = None
        self._manifests: list[Manifest] = []
        self.document: dict[str, Any] = {}
        self.body = b""

    def update(self, manifests: list[Manifest], default_model: str | None, routes: int) -> None:
        """Rebuilds the document unless it was built for these very manifests (by identity: a package loaded
        again is a new Manifest, even under the same name and version), default model and route count."""
        key = (default_model, routes, *map(id, manifests))
        if key == self._built_for:
            return
        self.document = self._build(manifests, default_model)
        self.body = dump_json(self.document)
        # The manifests are held, so no other Manifest can take one of their ids while the key names it.
        self._built_for, self._manifests = key, manifests


def add_served_models(
    openapi: dict[str, Any], manifests: list[Manifest], default_model: str | None, max_rows: int
) -> None:
    """Puts the served models into every inference route of an OpenAPI document: their example bodies (the
    default model's on the routes that name no model, one per model on the others), and on the routes that
    name no model, the default model's exact request schema (the others serve many shapes)."""
    bodies = {manifest.name: example_bodies(manifest) for manifest in manifests}
    default = next((manifest for manifest in manifests if manifest.name == default_model), None)
    for path, methods in openapi["paths"].items():
        operation = path.rsplit("/", 1)[-1]
        content = methods.get("post", {}).get("requestBody", {}).get("content", {}).get(JSON)
        if content is None or operation not in (*REQUESTS, "infer"):
            continue
        names = [default_model] if "{model}" not in path else sorted(bodies)
        content["examples"] = {
            name: {"summary": f"model {name}", "value": bodies[name][operation]} for name in names if name in bodies
        }
        if "{model}" not in path and operation in REQUESTS and default is not None:
            content["schema"] = exact_request(operation, default, max_rows)


# What a JSON number may be: float32's range (a larger value cannot be a model input).
FLOAT32_MAX = float(np.finfo(np.float32).max)
_NUMBER = {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}


def exact_request(operation: str, manifest: Manifest, max_rows: int) -> dict[str, Any]:
    """The JSON body one model accepts for one operation, as service.codecs checks it: every form of its
    rows (a batch or one row; in the model's shape or flattened; by feature name), the options and their
    ranges, and no other field."""
    if operation == "generate":
        properties: dict[str, Any] = {
            "n": {"type": "integer", "minimum": 1, "maximum": max_rows},
            "seed": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "null"}]},
        }
        return {"type": "object", "required": ["n"], "properties": properties, "additionalProperties": False}
    shapes: list[tuple[int, ...]]
    if operation == "decode":
        key, shapes, names = "latents", [(manifest.latent.dim,)], None
    else:
        key, names = "inputs", manifest.input.feature_names
        shapes = [manifest.row_shape] + ([(manifest.features,)] if len(manifest.row_shape) > 1 else [])
    properties = {key: _rows(shapes, names, max_rows)}
    if operation == "encode":
        properties["return_logvar"] = {"type": "boolean"} if manifest.architecture.variational else {"const": False}
    if operation == "score":
        properties["return_sq_err"] = {"type": "boolean"}
        properties["top_features"] = {"type": "integer", "minimum": 0}
    return {"type": "object", "required": [key], "properties": properties, "additionalProperties": False}


def _rows(shapes: list[tuple[int, ...]], names: list[str] | None, max_rows: int) -> dict[str, Any]:
    rows = [_nested(shape) for shape in shapes]
    if names is not None:
        by_name = {name: _NUMBER for name in names}
        rows.append({"type": "object", "required": names, "properties": by_name, "additionalProperties": False})
    batches = [{"type": "array", "items": row, "minItems": 1, "maxItems": max_rows} for row in rows]
    return {"anyOf": [*batches, *rows], "description": "a batch of rows, or one row"}


def _nested(shape: tuple[int, ...]) -> dict[str, Any]:
    schema: dict[str, Any] = _NUMBER
    for size in reversed(shape):
        schema = {"type": "array", "items": schema, "minItems": size, "maxItems": size}
    return schema
