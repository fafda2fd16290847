"""Request and response shapes for the OpenAPI page (/docs) only.

Requests are never validated through these models: bodies go through orjson into numpy (service.codecs),
which is what keeps a batch of thousands of floats cheap. These classes only tell /docs what to show.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from service.codecs import JSON, MULTIPART, NPY, NPZ, PNG, RAW

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


class GenerateRequest(BaseModel):
    n: int = Field(description="how many samples, 1 to the max-batch-rows setting")
    seed: int | None = Field(None, description="random seed; the same seed gives the same samples")


class UploadRequest(BaseModel):
    file: bytes = Field(description="a PNG or JPEG image; repeat the field for a batch")


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


class ScoreResponse(Answer):
    scores: list[float]
    threshold: float
    is_anomaly: list[bool]
    sq_err: Rows | None = None


class GenerateResponse(Answer):
    latents: list[list[float]]
    samples: Rows


class ErrorDetail(BaseModel):
    code: str = Field(examples=["invalid_shape"])
    message: str = Field(examples=["inputs has shape [1, 3]; expected one row of shape [5] or a batch ..."])


class ErrorBody(BaseModel):
    error: ErrorDetail


_ROW = [0.12, 3.4, -1.0, 0.0, 2.5]
_TABULAR = {"summary": "two tabular rows", "value": {"inputs": [_ROW, [0.5, 0.1, 0.2, -0.3, 1.1]]}}
_SINGLE = {"summary": "one row, without the outer list", "value": {"inputs": _ROW}}
_IMAGE = {"summary": "one 3 x 3 grayscale image", "value": {"inputs": [[[0, 255, 0], [255, 255, 255], [0, 255, 0]]]}}

EXAMPLES: dict[str, dict[str, dict[str, Any]]] = {
    "encode": {
        "tabular": _TABULAR,
        "single": _SINGLE,
        "vae": {"summary": "with the log-variance", "value": {"inputs": [_ROW], "return_logvar": True}},
    },
    "decode": {"latents": {"summary": "two latent vectors", "value": {"latents": [[0.1, -0.4], [1.2, 0.3]]}}},
    "reconstruct": {"tabular": _TABULAR, "image": _IMAGE},
    "score": {
        "tabular": _TABULAR,
        "sq_err": {"summary": "with per-feature errors", "value": {"inputs": [_ROW], "return_sq_err": True}},
    },
    "generate": {"seeded": {"summary": "four samples, reproducible", "value": {"n": 4, "seed": 0}}},
}
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
    422: "wrong shape, non-numbers, NaN/Inf, empty batch, unknown or missing fields",
    503: "the model is loading or unavailable",
}


def openapi_for(operation: str, uploads: bool, png: bool) -> dict[str, Any]:
    """`openapi_extra` and `responses` for one inference route: the request body and every answer."""
    content: dict[str, Any] = {
        JSON: {"schema": REQUESTS[operation].model_json_schema(), "examples": EXAMPLES[operation]}
    }
    binary = {"schema": {"type": "string", "format": "binary"}}
    if operation != "generate":
        content |= {NPY: binary, RAW: binary}
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
    return {"openapi_extra": {"requestBody": {"required": True, "content": content}}, "responses": responses}
