"""What `python -m training` is asked to do: every flag of `fit` (FitConfig) and `evaluate` (EvalConfig).

Each field is defined once, with its default and its help (the docstring below it); training.cli builds the
command line from these fields. A default of None means "chosen from the data" (training.recipes).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Arch = Literal["dense", "conv", "vae"]
Loss = Literal["mse", "bce", "huber"]
Scaling = Literal["box", "minmax", "standardise"]


@dataclass(frozen=True)
class Flag:
    """How a field shows on the command line: the help group that lists it, and where the field's name and
    type do not say it, its flag (a bool whose default is True: the flag that turns it off) and how its
    text is read."""

    group: str | None = None  # None: the command's own options
    name: str | None = None
    parse: Callable[[str], Any] | None = None


def sizes(text: str) -> list[int]:
    """Comma-separated positive integers, e.g. 256,128."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return values


def seed_list(text: str) -> tuple[int, ...]:
    """Comma-separated non-negative integers, e.g. 0,1,2."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"seeds must be non-negative integers, got {text!r}")
    return values


def height_x_width(text: str) -> tuple[int, int]:
    """H x W, e.g. 28x28."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H x W, like 28x28, got {text!r}") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return height, width


DATA, OUTPUT, MODEL, TRAINING = (
    Flag("data"),
    Flag("output"),
    Flag("model (defaults chosen from the data)"),
    Flag("training"),
)


class FitConfig(BaseModel):
    """Train an autoencoder on a data file and write models/<name>/<version>/."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    data: Annotated[Path, DATA]
    """IDX (gz or raw), .npz, .npy, .csv or .parquet; or a folder of PNG/JPEG/BMP images, labelled by their
    first-level subfolders when there are any."""
    name: Annotated[str, OUTPUT]
    """Model name: lower case, digits, . _ -"""
    models_dir: Annotated[Path, OUTPUT] = Path("models")
    """The model repository."""
    version: Annotated[int | None, OUTPUT] = None
    """Package version (default: the next integer)."""
    replace: Annotated[bool, OUTPUT] = False
    """Overwrite an existing version."""
    label_column: Annotated[str | None, DATA] = None
    """CSV/Parquet column holding labels (never a feature)."""
    normal_label: Annotated[str | None, DATA] = None
    """Train only on rows with this label (one-class setting)."""
    image_size: Annotated[tuple[int, int] | None, Flag(DATA.group, parse=height_x_width)] = None
    """Folders of images: H x W rows, e.g. 28x28 (default: the most common size)."""
    image_channels: Annotated[Literal[1, 3] | None, DATA] = None
    """Folders of images: 1 (grey) or 3 (RGB) (default: what most files have)."""
    val_fraction: Annotated[float, DATA] = 0.1
    """Share of rows held out for validation."""
    scaling: Annotated[Scaling | None, DATA] = None
    """Tables: box (default: q12.5..q87.5 onto [0, 1], reconstructions bounded to it; best for anomaly scores),
    minmax or standardise (faithful reconstructions of the tails). Images are divided by their peak value."""
    arch: Annotated[Arch | None, MODEL] = None
    """conv for images (dense under 2,000 training images), dense otherwise."""
    vae_body: Annotated[Literal["dense", "conv"] | None, MODEL] = None
    """The layers inside a VAE."""
    latent: Annotated[int | None, MODEL, Field(ge=1)] = None
    """Latent size (16 for images; features/3 for tables)."""
    hidden: Annotated[list[int] | None, MODEL] = None
    """Dense hidden sizes, e.g. 256,128 (128 under 2,000 training images)."""
    channels: Annotated[list[int] | None, MODEL] = None
    """Conv channels per stride-2 layer, e.g. 32,64."""
    loss: Annotated[Loss | None, MODEL] = None
    """mse (the score's own error; images), huber (robust to the anomalies among the rows; tables), or bce
    (inputs in [0, 1])."""
    members: Annotated[int | None, MODEL] = None
    """Tables: dense autoencoders in one ensemble model, codes of 1 to --latent units, each reading a random
    half of the features (default 10 without --arch, else 1: a single autoencoder)."""
    noise: Annotated[float | None, MODEL, Field(ge=0)] = None
    """Denoising: std of input noise, normalised (0.02 tables; images 0, 0.5 under 2,000 training images)."""
    beta: Annotated[float, MODEL, Field(ge=0)] = 1.0
    """VAE: weight of the KL term."""
    epochs: Annotated[int | None, TRAINING, Field(ge=1)] = None
    """60 for tables; images: at least 1500 steps, 30 to 200."""
    batch_size: Annotated[int, TRAINING, Field(ge=1)] = 128
    """Rows per optimiser step (per process under torchrun)."""
    lr: Annotated[float, TRAINING, Field(gt=0)] = 1e-3
    """Adam's learning rate."""
    weight_decay: Annotated[float | None, TRAINING, Field(ge=0)] = None
    """Adam's L2 penalty (1e-4 for tables, 0 for images)."""
    trim: Annotated[float | None, TRAINING, Field(ge=0, lt=0.5)] = None
    """Robust training: from the 10th epoch, the fraction of each batch's rows with the largest loss left out
    of the step, and of the validation rows left out of early stopping's loss (tables 0.2: the anomalies
    hidden among unlabelled rows stop pulling the model towards them; images 0)."""
    patience: Annotated[int | None, TRAINING, Field(ge=1)] = None
    """Early stopping: epochs without improvement (5, or 10 past 30 epochs)."""
    seed: Annotated[int, TRAINING] = 0
    """Seeds the validation split, the initial weights, the input noise and the batch order."""
    device: Annotated[str | None, TRAINING, Field(pattern=r"^(cpu|cuda(:[0-9]+)?)$")] = None
    """cpu or cuda (default: cuda when available)."""
    threshold_quantile: Annotated[float, TRAINING, Field(gt=0, lt=1)] = 0.99
    """The anomaly threshold: this quantile of the normal validation rows' scores."""
    progress: Annotated[bool, Flag(TRAINING.group, name="--quiet")] = True
    """Progress output while training; --quiet turns it off, leaving only the summary."""

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class EvalConfig(BaseModel):
    """How `python -m training evaluate` runs its protocol (the data files are its --data)."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    out: Annotated[Path, Flag()] = Path("reports/evaluation")
    """Where the JSON and PNG go."""
    epochs: Annotated[int | None, Flag()] = None
    """Override the recipe's epochs (quick checks only)."""
    device: Annotated[str | None, Flag()] = None
    """cpu or cuda (default: cuda when available)."""
    progress: Annotated[bool, Flag(name="--quiet")] = True
    """A progress bar while models train; --quiet turns it off, leaving only the table."""
    seeds: Annotated[tuple[int, ...], Flag(parse=seed_list)] = (0, 1, 2)
    """Tables: the autoencoder's seeds; the first is compared with the baselines, all give its spread."""
