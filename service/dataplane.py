"""The five operations, once, for every protocol: numpy arrays in, numpy arrays out, no HTTP.

Rows arrive parsed and shape-checked (service.codecs) on the raw scale; the runtime batches them with the
rows of concurrent requests. What an answer means (the threshold, is_anomaly, the prior samples are drawn
from) is decided here, so the REST routes and any other protocol give the same numbers for the same rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from anyio import to_thread

from service import codecs, labels
from service.codecs import non_finite_rows
from service.errors import ServiceError
from service.manifest import Manifest
from service.runtime import ModelRuntime, Scores


@dataclass(frozen=True)
class Encoded:
    latents: np.ndarray  # [n, L]; a VAE: the mean
    logvar: np.ndarray | None  # [n, L], a VAE asked for it; else None


@dataclass(frozen=True)
class Scored:
    reconstructions: np.ndarray  # [n, *S], raw scale
    scores: np.ndarray  # [n], mean squared error in normalised space
    sq_err: np.ndarray  # [n, *S], normalised space
    threshold: float
    is_anomaly: np.ndarray  # [n], scores > threshold
    percentiles: np.ndarray | None  # [n], among the normal validation scores; None: the package has no curve


@dataclass(frozen=True)
class Generated:
    latents: np.ndarray  # [n, L], drawn from the prior
    samples: np.ndarray  # [n, *S], raw scale


async def encode(runtime: ModelRuntime, x: np.ndarray, return_logvar: bool = False) -> Encoded:
    if return_logvar and not runtime.manifest.architecture.variational:
        raise ServiceError(422, "invalid_request", f"{runtime.manifest.name} is not a VAE: it has no log-variance")
    return encoded(*await runtime.encode_batched(x), return_logvar)


def encoded(latents: np.ndarray, logvar: np.ndarray | None, return_logvar: bool = False) -> Encoded:
    """What encode answers for the encoder's outputs; batch jobs (service.batch) call it on their own runs."""
    _check_finite(latents, "latent vectors")
    return Encoded(latents, logvar if return_logvar else None)


async def decode(runtime: ModelRuntime, z: np.ndarray) -> np.ndarray:
    reconstructions = await runtime.decode_batched(z)
    _check_finite(reconstructions, "reconstructions")  # latents far outside the prior overflow the decoder
    return reconstructions


async def score(runtime: ModelRuntime, x: np.ndarray) -> Scored:
    """Reconstructions and anomaly scores in one pass of the scorer graph (what reconstruct answers too); the
    scores join the model's monitoring window (service.monitoring)."""
    answer = scored(runtime.manifest, await runtime.score_batched(x))
    if runtime.monitor is not None and answer.percentiles is not None:
        runtime.monitor.record(answer.percentiles, answer.is_anomaly, answer.sq_err)
    return answer


def scored(manifest: Manifest, scores: Scores) -> Scored:
    """What score answers for the scorer's outputs; batch jobs (service.batch) call it on their own runs."""
    _check_finite(scores.score, "scores")
    threshold = manifest.score.threshold
    percentiles = manifest.score.percentiles(scores.score)
    return Scored(scores.x_hat, scores.score, scores.sq_err, threshold, scores.score > threshold, percentiles)


reconstruct = score


# Rows whose AUROC is computed off the event loop: a sort of more takes longer than a turn of the loop should.
SEPARATION_ON_LOOP_ROWS = 4096


async def separation(runtime: ModelRuntime, scores: np.ndarray, values: Sequence[Any]) -> labels.Separation:
    """How well the scores separate the classes of the model's label column, from its values for the same
    rows (service.labels)."""
    data = runtime.manifest.training.data
    assert data.label_column is not None
    work = partial(labels.separation, scores, values, data.label_column, data.normal_label)
    return await to_thread.run_sync(work) if len(values) > SEPARATION_ON_LOOP_ROWS else work()


async def generate(runtime: ModelRuntime, n: object, seed: object, max_rows: int) -> Generated:
    """n samples decoded from the latent prior (a VAE: N(0, I); else N(mean, cov) of the training rows)."""
    n, seed = codecs.integral(n), codecs.integral(seed)
    if type(n) is not int or n < 1:
        raise ServiceError(422, "invalid_request", f"n must be a positive integer, got {n!r}")
    if seed is not None and (type(seed) is not int or seed < 0):
        raise ServiceError(422, "invalid_request", f"seed must be a non-negative integer, got {seed!r}")
    if n > max_rows:
        raise ServiceError(413, "too_many_rows", f"n is {n}; at most {max_rows} per request")
    latents = runtime.sample_latents(n, seed)
    return Generated(latents, await runtime.decode_batched(latents))


def _check_finite(array: np.ndarray, what: str) -> None:
    # Inputs are finite (service.codecs), but values far outside the model's range can still overflow
    # float32 inside the graph; an answer of NaN or inf (null in JSON) would claim a number it is not.
    rows = non_finite_rows(array)
    if rows:
        raise ServiceError(
            422,
            "non_finite_result",
            f"the {what} of rows {rows} overflow float32: their values are too far out of range",
        )


# Image pixels are explained in square regions of this side: single pixels are too fine to act on.
REGION = 4


@dataclass(frozen=True)
class TopFeatures:
    """Per row, the k parts of the input that contribute most to its score, largest first: which part
    (`parts`, an index into `names` or `regions`), its squared error, and its share of the row's."""

    parts: np.ndarray  # [n, k] int
    sq_err: np.ndarray  # [n, k]
    share: np.ndarray  # [n, k]
    names: list[str] | None  # tables: the features' names (their index when the model has none)
    regions: np.ndarray | None  # images: [parts, 4] as top, left, bottom, right (bottom and right excluded)


# More parts than anyone reads per row; 1,024 rows of every part of an image was 800,000 objects to write.
MAX_TOP_FEATURES = 100


def top_features(runtime: ModelRuntime, sq_err: np.ndarray, k: int) -> TopFeatures:
    """The k parts of each row with the largest squared error: features for tables, REGION x REGION pixel
    regions (channels summed) for images."""
    if type(k) is not int or not 0 <= k <= MAX_TOP_FEATURES:
        raise ServiceError(
            422, "invalid_request", f"top_features must be an integer from 0 to {MAX_TOP_FEATURES}, got {k!r}"
        )
    manifest = runtime.manifest
    names, regions = None, None
    if manifest.input.kind == "image":
        parts, regions = _regions(sq_err)
    else:
        names = manifest.input.feature_names or [str(i) for i in range(manifest.features)]
        parts = sq_err.reshape(len(sq_err), -1)
    totals = parts.sum(axis=1, keepdims=True)
    shares = np.divide(parts, totals, out=np.zeros_like(parts), where=totals > 0)
    order = np.argsort(-parts, axis=1, kind="stable")[:, :k]
    picked = np.take_along_axis
    return TopFeatures(order, picked(parts, order, axis=1), picked(shares, order, axis=1), names, regions)


def _regions(sq_err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    per_pixel = sq_err.sum(axis=3) if sq_err.ndim == 4 else sq_err
    rows, height, width = per_pixel.shape
    tall, wide = -(-height // REGION), -(-width // REGION)
    padded = np.zeros((rows, tall * REGION, wide * REGION), dtype=np.float64)
    padded[:, :height, :width] = per_pixel
    blocks = padded.reshape(rows, tall, REGION, wide, REGION).sum(axis=(2, 4)).reshape(rows, -1)
    regions = np.array(
        [
            [y * REGION, x * REGION, min((y + 1) * REGION, height), min((x + 1) * REGION, width)]
            for y in range(tall)
            for x in range(wide)
        ]
    )
    return blocks, regions
