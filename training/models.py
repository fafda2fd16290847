"""The autoencoder architectures. Each works in normalised space: preprocessing is added at export.

Every model answers `encode(x) -> (mean, logvar or None)`, `decode(z) -> x_hat` and
`loss(x_in, x_target) -> per-row loss`, so the trainer and the exporter never look at the architecture.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

Body = Literal["dense", "conv"]


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model: stored in checkpoints and, in part, in the manifest."""

    body: Body
    input_shape: list[int]
    latent_dim: int
    variational: bool = False
    hidden: list[int] = field(default_factory=list)
    channels: list[int] = field(default_factory=list)
    output_activation: Literal["sigmoid", "identity"] = "identity"
    loss: Literal["mse", "bce"] = "mse"
    beta: float = 1.0

    @property
    def kind(self) -> str:
        return "vae" if self.variational else self.body

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


class Autoencoder(nn.Module):
    def __init__(self, spec: ModelSpec, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.encoder = encoder
        self.decoder = decoder

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.encoder(x)
        if not self.spec.variational:
            return h, None
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        out = self.decoder(z)
        return torch.sigmoid(out) if self.spec.output_activation == "sigmoid" else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)[0])

    def loss(self, x_in: torch.Tensor, x_target: torch.Tensor) -> torch.Tensor:
        """Per-row training loss: reconstruction (mean over features), plus beta * KL / features for a VAE."""
        mean, logvar = self.encode(x_in)
        z = mean
        if logvar is not None and self.training:
            z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
        logits_or_x = self.decoder(z)
        recon = _reconstruction_loss(self.spec, logits_or_x, x_target)
        if logvar is None:
            return recon
        kl = -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp(), dim=1)
        return recon + self.spec.beta * kl / math.prod(self.spec.input_shape)


def _reconstruction_loss(spec: ModelSpec, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if spec.loss == "bce":
        # On the logits: numerically stable, and the exported graph applies the sigmoid.
        per_feature = F.binary_cross_entropy_with_logits(out, target, reduction="none")
    else:
        x_hat = torch.sigmoid(out) if spec.output_activation == "sigmoid" else out
        per_feature = (x_hat - target) ** 2
    return per_feature.flatten(1).mean(dim=1)


def build_model(spec: ModelSpec) -> Autoencoder:
    if spec.loss == "bce" and spec.output_activation != "sigmoid":
        raise ValueError("binary cross-entropy needs a sigmoid output (inputs scaled into [0, 1])")
    builders = {"dense": _dense, "conv": _conv}
    encoder, decoder = builders[spec.body](spec)
    return Autoencoder(spec, encoder, decoder)


def _dense(spec: ModelSpec) -> tuple[nn.Module, nn.Module]:
    features = math.prod(spec.input_shape)
    code = spec.latent_dim * (2 if spec.variational else 1)
    widths = [features, *spec.hidden]
    enc: list[nn.Module] = [nn.Flatten()]
    for a, b in itertools.pairwise(widths):
        enc += [nn.Linear(a, b), nn.ReLU()]
    enc.append(nn.Linear(widths[-1], code))
    back = [spec.latent_dim, *reversed(spec.hidden)]
    dec: list[nn.Module] = []
    for a, b in itertools.pairwise(back):
        dec += [nn.Linear(a, b), nn.ReLU()]
    dec += [nn.Linear(back[-1], features), nn.Unflatten(1, tuple(spec.input_shape))]
    return nn.Sequential(*enc), nn.Sequential(*dec)


class _ChannelsFirst(nn.Module):
    """Images arrive as [N, H, W] or [N, H, W, C]; convolutions want [N, C, H, W]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)


class _ChannelsLast(nn.Module):
    def __init__(self, had_channels: bool) -> None:
        super().__init__()
        self.had_channels = had_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1) if self.had_channels else x.squeeze(1)


def _conv(spec: ModelSpec) -> tuple[nn.Module, nn.Module]:
    if len(spec.input_shape) not in (2, 3):
        raise ValueError(f"conv needs image inputs H x W [x C], got shape {spec.input_shape}")
    height, width = spec.input_shape[:2]
    in_channels = spec.input_shape[2] if len(spec.input_shape) == 3 else 1
    # Each stride-2 convolution maps a side s to ceil(s / 2); remember the sides to undo them exactly.
    sides = [(height, width)]
    for _ in spec.channels:
        h, w = sides[-1]
        sides.append(((h + 1) // 2, (w + 1) // 2))
    chans = [in_channels, *spec.channels]
    enc: list[nn.Module] = [_ChannelsFirst()]
    for a, b in itertools.pairwise(chans):
        enc += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.ReLU()]
    flat = chans[-1] * sides[-1][0] * sides[-1][1]
    code = spec.latent_dim * (2 if spec.variational else 1)
    enc += [nn.Flatten(), nn.Linear(flat, code)]

    dec: list[nn.Module] = [
        nn.Linear(spec.latent_dim, flat),
        nn.ReLU(),
        nn.Unflatten(1, (chans[-1], *sides[-1])),
    ]
    for i in range(len(spec.channels), 0, -1):
        (h_in, w_in), (h_out, w_out) = sides[i], sides[i - 1]
        pad = (h_out - (2 * h_in - 1), w_out - (2 * w_in - 1))
        dec.append(nn.ConvTranspose2d(chans[i], chans[i - 1], 3, stride=2, padding=1, output_padding=pad))
        if i > 1:
            dec.append(nn.ReLU())
    dec.append(_ChannelsLast(len(spec.input_shape) == 3))
    return nn.Sequential(*enc), nn.Sequential(*dec)


def save_checkpoint(model: Autoencoder, path: str | Any, offset: np.ndarray, scale: np.ndarray) -> None:
    """Weights, the spec to rebuild the model, and the normalisation it was trained in."""
    normalisation = {"offset": offset.reshape(-1).tolist(), "scale": scale.reshape(-1).tolist()}
    torch.save({"spec": asdict(model.spec), "state_dict": model.state_dict(), **normalisation}, path)


def load_checkpoint(path: str | Any) -> tuple[Autoencoder, dict[str, list[float]]]:
    """The trained model (in eval mode) and its normalisation (`offset`, `scale`)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(ModelSpec(**blob["spec"]))
    model.load_state_dict(blob["state_dict"])
    return model.eval(), {"offset": blob["offset"], "scale": blob["scale"]}
