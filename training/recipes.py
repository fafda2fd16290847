"""Defaults chosen from the data when the user leaves flags out, and the preprocessing fitted on it."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from training.config import FitConfig
from training.data import DataError, Dataset, select_normal
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
    # Min-max rather than standardising: the training rows fill [0, 1], so a row beyond the training
    # range cannot be reconstructed, and a heavy-tailed column does not dwarf the others. Measured with
    # `python -m training evaluate tabular` on five ADBench sets: mean AUROC 0.795 standardised, 0.855
    # with min-max scaling, input noise and weight decay (robust median/IQR scaling: 0.754).
    low = x_train.min(axis=0).astype(np.float64)
    span = x_train.max(axis=0).astype(np.float64) - low
    # A constant column carries no information; scale 1 keeps it finite instead of dividing by zero.
    span = np.where(span > 1e-8, span, 1.0)
    description = "(x - min) / (max - min) per feature, on the training rows"
    return Normalisation("minmax", low.astype(np.float32), span.astype(np.float32), description)


# Tables: a little input noise (denoising), weight decay and a short run keep the autoencoder from
# learning to reconstruct the anomalies that unlabelled training data contains (longer training lowered
# ADBench AUROC). Images: enough optimiser steps however few the rows (a one-class MNIST digit has 720
# training images: 30 epochs are 180 steps), with early stopping on validation loss deciding the end.
TABULAR_NOISE = 0.02
TABULAR_WEIGHT_DECAY = 1e-3
TABULAR_EPOCHS = 30
IMAGE_MIN_STEPS = 1500
IMAGE_EPOCHS = (30, 200)


def resolve_training(config: FitConfig, data: Dataset) -> FitConfig:
    """The config with the training settings the user left out chosen from the data."""
    tabular = data.kind == "tabular"
    noise = config.noise if config.noise is not None else (TABULAR_NOISE if tabular else 0.0)
    decay = config.weight_decay if config.weight_decay is not None else (TABULAR_WEIGHT_DECAY if tabular else 0.0)
    epochs = config.epochs or (TABULAR_EPOCHS if tabular else _image_epochs(config, data))
    patience = config.patience or (5 if epochs <= 30 else 10)
    return replace(config, noise=noise, weight_decay=decay, epochs=epochs, patience=patience)


def _image_epochs(config: FitConfig, data: Dataset) -> int:
    rows = len(data.x) if config.normal_label is None else int(select_normal(data, config.normal_label).sum())
    steps_per_epoch = max(1, math.ceil(rows * (1 - config.val_fraction) / config.batch_size))
    low, high = IMAGE_EPOCHS
    return max(low, min(high, math.ceil(IMAGE_MIN_STEPS / steps_per_epoch)))


def model_spec(config: FitConfig, data: Dataset) -> ModelSpec:
    image = data.kind == "image"
    arch = config.arch or ("conv" if image and len(data.shape) in (2, 3) else "dense")
    body = (config.vae_body or ("conv" if image else "dense")) if arch == "vae" else arch
    features = int(np.prod(data.shape))
    # 16 for images: reconstruction MSE stays well under PCA's, and the tighter bottleneck separates
    # unseen classes better (one-class MNIST AUROC rose over 32).
    latent = config.latent or (16 if image else max(2, min(16, features // 3)))
    if latent < 1:
        raise DataError(f"--latent must be at least 1, got {latent}")
    # MSE also for images: the served score is a squared error, so train on what is measured.
    loss = config.loss or "mse"
    if loss == "bce" and not image:
        raise DataError("--loss bce needs inputs in [0, 1]; new tabular rows can leave the training range: use mse")
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
