"""The autoencoder architectures. Each works in normalised space: preprocessing is added at export.

Every model answers `encode(x) -> (mean, logvar or None)`, `decode(z) -> x_hat`,
`reconstruction(x) -> (x_hat, per-feature squared error)` and `loss(x_in, x_target) -> per-row loss`, so the
trainer and the exporter never look at the architecture.
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

from service.manifest import Architecture, ArchitectureKind

Body = Literal["dense", "conv"]
# Huber's delta in normalised units: on box-scaled tables the box is [0, 1], so errors beyond half the box (the
# rows that stray far, anomalies among them) pull on the weights linearly, not quadratically.
HUBER_DELTA = 0.5


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
    loss: Literal["mse", "bce", "huber"] = "mse"
    beta: float = 1.0
    # An ensemble (dense only; empty: one autoencoder): member m reads only the features member_features[m]
    # (the others are zeroed), codes them in member_latents[m] units and reconstructs every feature. The
    # latent vector is the members' codes side by side (latent_dim is their sum), x_hat the mean of their
    # reconstructions, and the squared error the mean of theirs.
    member_latents: list[int] = field(default_factory=list)
    member_features: list[list[int]] = field(default_factory=list)

    @property
    def kind(self) -> ArchitectureKind:
        return "vae" if self.variational else self.body

    @property
    def widest_code(self) -> int:
        """The latent size of the widest member (of the model itself when it is not an ensemble): as many
        components as PCA, the baseline, is given."""
        return max(self.member_latents, default=self.latent_dim)

    def architecture(self, noise: float) -> Architecture:
        """The manifest's `architecture`: this spec, and the input noise it was trained with."""
        return Architecture(kind=self.kind, **asdict(self), noise=noise)


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

    def reconstruction(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_hat and the per-feature squared error the score averages (through the mean latent of a VAE)."""
        x_hat = self(x)
        return x_hat, (x - x_hat) ** 2

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
        per_feature = _regression_loss(spec, x_hat, target)
    return per_feature.flatten(1).mean(dim=1)


def _regression_loss(spec: ModelSpec, x_hat: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if spec.loss == "huber":
        return F.huber_loss(x_hat, target.expand_as(x_hat), reduction="none", delta=HUBER_DELTA)
    return (x_hat - target) ** 2


def build_model(spec: ModelSpec) -> Autoencoder:
    if spec.loss == "bce" and spec.output_activation != "sigmoid":
        raise ValueError("binary cross-entropy needs a sigmoid output (inputs scaled into [0, 1])")
    if spec.member_latents:
        return _ensemble(spec)
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


class Ensemble(Autoencoder):
    """Dense autoencoders trained side by side, each on its own loss, in one module and one ONNX graph.

    Why: one autoencoder either fits the anomalies among its unlabelled training rows (a wide code) or
    misses real structure (a narrow one). Members with codes from 1 unit to the full size, each reading
    a random half of the features (feature bagging, as in RandNet, Chen et al. 2017), err differently
    on normal rows and all together on anomalies; the mean of their errors also counts their disagreement.
    """

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.encoder(x), None

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._members_decode(z).mean(dim=0)

    def reconstruction(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        members = self._members_decode(self.encoder(x))
        return members.mean(dim=0), ((members - x.unsqueeze(0)) ** 2).mean(dim=0)

    def loss(self, x_in: torch.Tensor, x_target: torch.Tensor) -> torch.Tensor:
        """The members' own losses summed: each member gets the gradient it would get trained alone, so
        Adam's weight decay weighs on it as on a single model."""
        members = self._members_decode(self.encoder(x_in))
        per_feature = _regression_loss(self.spec, members, x_target.unsqueeze(0))
        return per_feature.flatten(2).mean(dim=2).sum(dim=0)

    def _members_decode(self, z: torch.Tensor) -> torch.Tensor:
        out = self.decoder(z)
        return torch.sigmoid(out) if self.spec.output_activation == "sigmoid" else out


class _MemberLinear(nn.Module):
    """One nn.Linear per member, applied to [members, rows, in] as one batched matmul (one ONNX MatMul)."""

    def __init__(self, members: int, fan_in: int, fan_out: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(fan_in)  # nn.Linear's initial range
        self.weight = nn.Parameter(torch.empty(members, fan_in, fan_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, fan_out).uniform_(-bound, bound))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.matmul(h, self.weight) + self.bias


def _member_stack(members: int, widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(_MemberLinear(members, a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _code_selection(spec: ModelSpec) -> torch.Tensor:
    """[latent_dim, members * widest code]: 1 where a latent unit sits in the members' padded codes."""
    widest = max(spec.member_latents)
    select = torch.zeros(spec.latent_dim, len(spec.member_latents) * widest)
    unit = 0
    for member, size in enumerate(spec.member_latents):
        for k in range(size):
            select[unit, member * widest + k] = 1.0
            unit += 1
    return select


class _MemberEncoder(nn.Module):
    feature_mask: torch.Tensor
    select: torch.Tensor

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        features, members = math.prod(spec.input_shape), len(spec.member_latents)
        mask = torch.zeros(members, 1, features)
        for member, chosen in enumerate(spec.member_features):
            mask[member, 0, chosen] = 1.0
        self.register_buffer("feature_mask", mask)
        self.register_buffer("select", _code_selection(spec))
        self.layers = _member_stack(members, [features, *spec.hidden, max(spec.member_latents)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = self.layers(x.flatten(1).unsqueeze(0) * self.feature_mask)  # [members, rows, widest]
        side_by_side = codes.permute(1, 0, 2).flatten(1)
        return side_by_side @ self.select.T  # drops the padding: [rows, latent_dim]


class _MemberDecoder(nn.Module):
    select: torch.Tensor

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        members = len(spec.member_latents)
        self.register_buffer("select", _code_selection(spec))
        self.layers = _member_stack(
            members, [max(spec.member_latents), *reversed(spec.hidden), math.prod(spec.input_shape)]
        )
        self.members, self.shape = members, tuple(spec.input_shape)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        padded = (z @ self.select).unflatten(1, (self.members, -1)).permute(1, 0, 2)
        out = self.layers(padded)  # [members, rows, features]
        return out.unflatten(2, self.shape)


def _ensemble(spec: ModelSpec) -> Ensemble:
    if spec.body != "dense" or spec.variational:
        raise ValueError(f"an ensemble is built of dense autoencoders, not {spec.kind}")
    if len(spec.member_features) != len(spec.member_latents) or sum(spec.member_latents) != spec.latent_dim:
        raise ValueError(
            f"{len(spec.member_latents)} member latents summing to {sum(spec.member_latents)}, "
            f"{len(spec.member_features)} feature lists, latent_dim {spec.latent_dim}: they must agree"
        )
    return Ensemble(spec, _MemberEncoder(spec), _MemberDecoder(spec))


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
