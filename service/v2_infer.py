"""A served model as the Open Inference Protocol sees it, whatever carries the protocol (HTTP:
service.routes.v2; gRPC: service.grpc): its tensors, and what infer computes from a parsed request through
the data plane and batchers the REST routes use, so every protocol gives the same numbers for the same rows.

    inputs   x  FP32 [-1, *row shape]      z  FP32 [-1, latent]          (exactly one of them per request)
    outputs  from x: z, z_logvar (a VAE), x_hat, score [-1], is_anomaly BOOL [-1], percentile [-1], sq_err,
             top_features BYTES [-1, k] and top_features_share [-1, k];  from z: x_hat

A table trained with a label column also takes that column as a second input beside x (BYTES or numbers,
[-1] or [-1, 1]: one label per row), never scored; the answer's parameters then say how well the scores
separate its classes (label_column, label_normal, label_anomalous, label_unlabelled, and auroc or
auroc_note; service.labels).

percentile is each score's percentile among the normal validation scores (packages that store the curve);
top_features names the k features (or pixel regions "top,left,bottom,right") with the largest squared
error, and top_features_share their share of the row's; k is the request's parameters.top_features
(default 3), and they are computed only when asked for by name. Infer runs only the graphs the requested
outputs need."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import numpy as np

from service import codecs, dataplane, labels
from service.runtime import ModelRuntime
from service.v2_codec import NUMBERS_ONLY, InferRequest, bad

PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data", "model_repository"]
ENCODER_OUTPUTS = {"z", "z_logvar"}
SCORER_OUTPUTS = {"x_hat", "score", "is_anomaly", "percentile", "sq_err", "top_features", "top_features_share"}
ON_REQUEST = ("top_features", "top_features_share")  # never in the default "every output"
TOP_FEATURES = 3
DATATYPES = {"is_anomaly": "BOOL", "top_features": "BYTES"}


def tensors(runtime: ModelRuntime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(inputs, outputs) as model metadata lists them: name, datatype, shape with -1 for the batch."""
    manifest = runtime.manifest
    row, latent = [-1, *manifest.row_shape], [-1, manifest.latent.dim]
    inputs = [{"name": "x", "datatype": "FP32", "shape": row}, {"name": "z", "datatype": "FP32", "shape": latent}]
    shapes = {"z": latent, "z_logvar": latent, "x_hat": row, "sq_err": row, "top_features": [-1, -1]}
    shapes["top_features_share"] = shapes["top_features"]
    outputs = [
        {"name": name, "datatype": DATATYPES.get(name, "FP32"), "shape": shapes.get(name, [-1])}
        for name in outputs_from_x(runtime)
    ]
    return inputs, outputs


def outputs_from_x(runtime: ModelRuntime) -> list[str]:
    logvar = ["z_logvar"] if runtime.manifest.architecture.variational else []
    percentile = ["percentile"] if runtime.manifest.score.quantiles is not None else []
    return ["z", *logvar, "x_hat", "score", "is_anomaly", *percentile, "sq_err", *ON_REQUEST]


async def run(
    runtime: ModelRuntime, request: InferRequest, max_rows: int
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    inputs = dict(request.inputs)
    label = runtime.manifest.training.data.label_column
    named = label is not None and label not in NUMBERS_ONLY and label in inputs and "x" in inputs
    values = inputs.pop(str(label)) if named else None
    unknown = sorted(set(inputs) - {"x", "z"})
    if unknown or len(inputs) != 1:
        beside = f", and beside x the label column {label!r} if you like" if label is not None else ""
        raise bad(f"give exactly one input, x (rows) or z (latents){beside}; got {sorted(request.inputs)}")
    [(name, array)] = inputs.items()
    shape = runtime.manifest.row_shape if name == "x" else (runtime.manifest.latent.dim,)
    rows = codecs.shaped(array.astype(np.float32, copy=False), shape, name, max_rows)
    labelled = None if values is None else _labels(values, len(rows), str(label))
    offered = outputs_from_x(runtime) if name == "x" else ["x_hat"]
    wanted = list(request.outputs) or [output for output in offered if output not in ON_REQUEST]
    refused = [output for output in wanted if output not in offered]
    if refused:
        raise bad(f"outputs {refused} cannot be computed from {name}; it gives {offered}")
    if name == "z":
        return {"x_hat": await dataplane.decode(runtime, rows)}, {}
    return await _from_rows(runtime, rows, wanted, request.parameters.get("top_features", TOP_FEATURES), labelled)


def _labels(values: np.ndarray, rows: int, label: str) -> list[Any]:
    """The label column's values, one per row of x: shape [n] or [n, 1]."""
    if values.shape not in ((rows,), (rows, 1)):
        raise bad(f"input {label!r}: shape {list(values.shape)}; the label column takes one value per row, [{rows}]")
    return values.ravel().tolist()


async def _from_rows(
    runtime: ModelRuntime, x: np.ndarray, wanted: list[str], k: object, labelled: list[Any] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    jobs: dict[str, Awaitable[Any]] = {}
    if ENCODER_OUTPUTS & set(wanted):
        jobs["encoded"] = dataplane.encode(runtime, x, return_logvar="z_logvar" in wanted)
    if SCORER_OUTPUTS & set(wanted) or labelled is not None:  # labels are read against the scores
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
    parameters: dict[str, Any] = {"threshold": runtime.manifest.score.threshold}
    if labelled is not None:
        parameters |= _separation(await dataplane.separation(runtime, done["scored"].scores, labelled))
    return outputs, parameters


def _separation(found: labels.Separation) -> dict[str, Any]:
    """The separation as the protocol's parameters, which are scalars: `auroc`, or `auroc_note` saying why
    there is none."""
    counts = {"label_normal": found.normal, "label_anomalous": found.anomalous, "label_unlabelled": found.unlabelled}
    answer = {"label_column": found.column, **counts}
    return answer | ({"auroc": found.auroc} if found.auroc is not None else {"auroc_note": found.note})


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
