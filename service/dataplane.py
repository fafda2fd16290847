"""The five operations, once, for every protocol: numpy arrays in, numpy arrays out, no HTTP.

Rows arrive parsed and shape-checked (service.codecs) on the raw scale; the runtime batches them with the
rows of concurrent requests. What an answer means (the threshold, is_anomaly, the prior samples are drawn
from) is decided here, so the REST routes and any other protocol give the same numbers for the same rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.errors import ServiceError
from service.runtime import ModelRuntime


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


@dataclass(frozen=True)
class Generated:
    latents: np.ndarray  # [n, L], drawn from the prior
    samples: np.ndarray  # [n, *S], raw scale


async def encode(runtime: ModelRuntime, x: np.ndarray, return_logvar: bool = False) -> Encoded:
    if return_logvar and not runtime.manifest.architecture.variational:
        raise ServiceError(422, "invalid_request", f"{runtime.manifest.name} is not a VAE: it has no log-variance")
    latents, logvar = await runtime.encode_batched(x)
    _check_finite(latents, "latent vectors")
    return Encoded(latents, logvar if return_logvar else None)


async def decode(runtime: ModelRuntime, z: np.ndarray) -> np.ndarray:
    return await runtime.decode_batched(z)


async def score(runtime: ModelRuntime, x: np.ndarray) -> Scored:
    """Reconstructions and anomaly scores in one pass of the scorer graph (what reconstruct answers too)."""
    scores = await runtime.score_batched(x)
    _check_finite(scores.score, "scores")
    threshold = runtime.manifest.score.threshold
    return Scored(scores.x_hat, scores.score, scores.sq_err, threshold, scores.score > threshold)


reconstruct = score


async def generate(runtime: ModelRuntime, n: object, seed: object, max_rows: int) -> Generated:
    """n samples decoded from the latent prior (a VAE: N(0, I); else N(mean, cov) of the training rows)."""
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
    finite = np.isfinite(array).reshape(len(array), -1).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)[:10].tolist()
        raise ServiceError(
            422,
            "non_finite_result",
            f"the {what} of rows {rows} overflow float32: their values are too far out of range",
        )
