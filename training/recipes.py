"""Defaults chosen from the data when the user leaves flags out, and the preprocessing fitted on it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.config import FitConfig
from training.data import DataError, Dataset
from training.models import ModelSpec


@dataclass
class Normalisation:
    """x_norm = (x - offset) / scale, broadcast against one row."""

    kind: str
    offset: np.ndarray
    scale: np.ndarray
    description: str

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.offset) / self.scale).astype(np.float32)

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "offset": self.offset.reshape(-1).tolist(),
            "scale": self.scale.reshape(-1).tolist(),
            "description": self.description,
        }


def fit_normalisation(data: Dataset, x_train: np.ndarray) -> Normalisation:
    if data.kind == "image":
        # Pixel data in 0..255 is divided by 255; data already in [0, 1] is left alone.
        peak = 255.0 if float(x_train.max()) > 1.0 else 1.0
        one = np.ones(1, dtype=np.float32)
        return Normalisation("divide", 0 * one, peak * one, f"x / {peak:g}")
    mean = x_train.mean(axis=0, dtype=np.float64)
    std = x_train.std(axis=0, dtype=np.float64)
    # A constant column carries no information; scale 1 keeps it finite instead of dividing by zero.
    std = np.where(std > 1e-8, std, 1.0)
    return Normalisation("standardise", mean.astype(np.float32), std.astype(np.float32), "(x - mean) / std per feature")


def model_spec(config: FitConfig, data: Dataset) -> ModelSpec:
    image = data.kind == "image"
    arch = config.arch or ("conv" if image and len(data.shape) in (2, 3) else "dense")
    body = (config.vae_body or ("conv" if image else "dense")) if arch == "vae" else arch
    features = int(np.prod(data.shape))
    latent = config.latent or (32 if image else max(2, min(16, features // 3)))
    if latent < 1:
        raise DataError(f"--latent must be at least 1, got {latent}")
    loss = config.loss or ("bce" if image else "mse")
    if loss == "bce" and not image:
        raise DataError("--loss bce needs inputs in [0, 1]; tabular data is standardised, use --loss mse")
    if body == "conv" and not image:
        raise DataError(f"{data.source}: --arch conv needs image inputs (H x W [x C]), got shape {data.shape}")
    hidden = config.hidden if config.hidden is not None else _default_hidden(features, latent, image)
    channels = config.channels if config.channels is not None else [32, 64]
    return ModelSpec(
        body=body,
        input_shape=list(data.shape),
        latent_dim=latent,
        variational=arch == "vae",
        hidden=list(hidden) if body == "dense" else [],
        channels=list(channels) if body == "conv" else [],
        output_activation="sigmoid" if image else "identity",
        loss=loss,
        beta=config.beta,
    )


def _default_hidden(features: int, latent: int, image: bool) -> list[int]:
    if image:
        return [256, 128]
    width = max(2 * latent, min(64, 2 * features))
    return [width, max(latent, width // 2)]
