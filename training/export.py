"""ONNX export of the three graphs (encoder, decoder, scorer) and the parity gate that guards it.

The graphs take and return raw-scale values: the normalisation fitted on the training data is folded
into them, so the service never needs to know it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from service.manifest import Graph, graph_io
from training.errors import ExportParityError
from training.models import Autoencoder, ModelSpec
from training.recipes import Normalisation

PARITY_ATOL = 1e-4
PARITY_RTOL = 1e-3
PARITY_ROWS = 256


class _Normalised(nn.Module):
    offset: torch.Tensor
    scale: torch.Tensor

    def __init__(self, model: Autoencoder, norm: Normalisation) -> None:
        super().__init__()
        self.model = model
        shape = model.spec.input_shape if norm.offset.size > 1 else [1]
        self.register_buffer("offset", torch.from_numpy(norm.offset.reshape(shape).astype(np.float32)))
        self.register_buffer("scale", torch.from_numpy(norm.scale.reshape(shape).astype(np.float32)))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.offset) / self.scale

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset


class EncoderGraph(_Normalised):
    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.model.encode(self.normalise(x))
        return mean if logvar is None else (mean, logvar)


class DecoderGraph(_Normalised):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.denormalise(self.model.decode(z))


class ScorerGraph(_Normalised):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x_hat, sq_err = self.model.reconstruction(self.normalise(x))
        return self.denormalise(x_hat), sq_err.flatten(1).mean(dim=1), sq_err


@torch.no_grad()
def served_scores(model: Autoencoder, norm: Normalisation, x: np.ndarray) -> np.ndarray:
    """The `score` output of the scorer graph, computed by the module that is exported to ONNX."""
    scorer = ScorerGraph(model.cpu().eval(), norm).eval()
    chunks = [scorer(torch.from_numpy(chunk))[1] for chunk in np.array_split(x, max(1, len(x) // 1024))]
    return torch.cat(chunks).numpy().astype(np.float64)


def score_definition(spec: ModelSpec) -> str:
    """The manifest's words for what `ScorerGraph` computes."""
    single = "mean over features of the squared error in normalised space"
    if not spec.member_latents:
        return single
    return f"{single}, averaged over the {len(spec.member_latents)} ensemble members (x_hat: their mean reconstruction)"


@dataclass
class GraphSpec:
    file: str
    module: nn.Module
    inputs: list[str]
    outputs: list[str]

    def manifest_entry(self) -> Graph:
        return Graph(file=self.file, inputs=self.inputs, outputs=self.outputs)


_MODULES: dict[str, type[_Normalised]] = {"encoder": EncoderGraph, "decoder": DecoderGraph, "scorer": ScorerGraph}


def graph_specs(model: Autoencoder, norm: Normalisation) -> dict[str, GraphSpec]:
    """The three graphs, with the inputs and outputs the package format requires of each."""
    model = model.cpu().eval()
    return {
        role: GraphSpec(f"{role}.onnx", _MODULES[role](model, norm), inputs, outputs)
        for role, (inputs, outputs) in graph_io(model.spec.variational).items()
    }


def export_graphs(graphs: dict[str, GraphSpec], folder: Path, example: np.ndarray, latent_dim: int) -> None:
    examples = {"x": torch.from_numpy(example[:2]), "z": torch.zeros(2, latent_dim)}
    for spec in graphs.values():
        dynamic = {name: {0: "batch"} for name in spec.inputs + spec.outputs}
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter is deprecated in favour of dynamo, but it is exact for these
            # plain feed-forward graphs and does not need onnxscript.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                spec.module,
                (examples[spec.inputs[0]],),
                str(folder / spec.file),
                input_names=spec.inputs,
                output_names=spec.outputs,
                dynamic_axes=dynamic,
                opset_version=17,
                dynamo=False,
            )


def check_parity(graphs: dict[str, GraphSpec], folder: Path, x: np.ndarray, latent_dim: int) -> dict[str, float]:
    """Runs every graph in onnxruntime and PyTorch on the same rows; returns the largest difference per output."""
    x = x[:PARITY_ROWS]
    rng = np.random.default_rng(0)
    feeds = {"x": x, "z": rng.standard_normal((len(x), latent_dim)).astype(np.float32)}
    worst: dict[str, float] = {}
    for name, spec in graphs.items():
        session = ort.InferenceSession(str(folder / spec.file), providers=["CPUExecutionProvider"])
        got_names = [o.name for o in session.get_outputs()]
        if got_names != spec.outputs:
            raise ExportParityError(f"{spec.file}: outputs {got_names}, expected {spec.outputs}")
        feed = feeds[spec.inputs[0]]
        got = session.run(None, {spec.inputs[0]: feed})
        with torch.no_grad():
            want = spec.module(torch.from_numpy(feed))
        want_list = [want] if isinstance(want, torch.Tensor) else list(want)
        for output, ours, theirs in zip(spec.outputs, got, want_list, strict=True):
            worst[f"{name}.{output}"] = _compare(f"{spec.file} output {output!r}", ours, theirs.numpy())
    return worst


def _compare(what: str, ours: np.ndarray, reference: np.ndarray) -> float:
    if ours.shape != reference.shape:
        raise ExportParityError(f"{what}: onnxruntime shape {ours.shape}, PyTorch {reference.shape}")
    diff = np.abs(ours - reference)
    allowed = PARITY_ATOL + PARITY_RTOL * np.abs(reference)
    if not np.all(diff <= allowed):
        raise ExportParityError(
            f"{what}: onnxruntime differs from PyTorch by up to {float(diff.max()):.3g} "
            f"(allowed {PARITY_ATOL:g} + {PARITY_RTOL:g} * |value|)"
        )
    return float(diff.max()) if diff.size else 0.0
