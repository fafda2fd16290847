"""What one training run is asked to do: every `python -m training fit` flag, as one dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Arch = Literal["dense", "conv", "vae"]
Loss = Literal["mse", "bce", "huber"]
Scaling = Literal["box", "minmax", "standardise"]


@dataclass
class FitConfig:
    data: Path
    name: str
    models_dir: Path = Path("models")
    version: int | None = None
    replace: bool = False
    # Data selection.
    label_column: str | None = None
    normal_label: str | None = None
    image_size: tuple[int, int] | None = None  # folders of images: H x W; None: the most common size
    image_channels: int | None = None  # folders of images: 1 or 3; None: what most files have
    val_fraction: float = 0.1
    scaling: Scaling | None = None  # tables only; images are divided by their peak value
    # Model; None means "chosen from the data" (see training.recipes).
    arch: Arch | None = None
    vae_body: Literal["dense", "conv"] | None = None
    latent: int | None = None
    hidden: list[int] | None = None
    channels: list[int] | None = None
    loss: Loss | None = None
    members: int | None = None  # dense autoencoders in one ensemble model; 1: a single autoencoder
    noise: float | None = None
    beta: float = 1.0
    # Optimisation.
    epochs: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float | None = None
    patience: int | None = None
    seed: int = 0
    device: str | None = None
    threshold_quantile: float = 0.99
    max_rows: int | None = None
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["data"] = str(self.data)
        out["models_dir"] = str(self.models_dir)
        return out
