from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from training.export import ExportParityError, check_parity, export_graphs, graph_specs
from training.models import ModelSpec, build_model
from training.recipes import Normalisation


def _norm(features: int) -> Normalisation:
    rng = np.random.default_rng(1)
    offset = rng.standard_normal(features).astype(np.float32)
    scale = (rng.random(features) + 0.5).astype(np.float32)
    return Normalisation("standardise", offset, scale, "test")


@pytest.mark.parametrize("variational", [False, True])
def test_graphs_match_pytorch_and_fold_in_preprocessing(tmp_path: Path, variational: bool) -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(body="dense", input_shape=[5], latent_dim=2, hidden=[8], variational=variational))
    norm = _norm(5)
    graphs = graph_specs(model, norm)
    x = np.random.default_rng(0).standard_normal((40, 5)).astype(np.float32) * 3
    export_graphs(graphs, tmp_path, x, latent_dim=2)
    worst = check_parity(graphs, tmp_path, x, latent_dim=2)
    assert max(worst.values()) < 1e-4

    scorer = ort.InferenceSession(str(tmp_path / "scorer.onnx"), providers=["CPUExecutionProvider"])
    x_hat, score, sq_err = scorer.run(None, {"x": x})
    with torch.no_grad():
        x_norm = (torch.from_numpy(x) - torch.from_numpy(norm.offset)) / torch.from_numpy(norm.scale)
        want_norm = model(x_norm).numpy()
    np.testing.assert_allclose(x_hat, want_norm * norm.scale + norm.offset, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sq_err, (x_norm.numpy() - want_norm) ** 2, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(score, sq_err.mean(axis=1), rtol=1e-5)
    encoder = ort.InferenceSession(str(tmp_path / "encoder.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in encoder.get_outputs()] == (["z", "z_logvar"] if variational else ["z"])
    assert encoder.get_inputs()[0].shape == ["batch", 5]


def test_parity_gate_fails_loudly_when_graphs_drift(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(body="dense", input_shape=[4], latent_dim=2, hidden=[4]))
    graphs = graph_specs(model, _norm(4))
    x = np.ones((8, 4), dtype=np.float32)
    export_graphs(graphs, tmp_path, x, latent_dim=2)
    with torch.no_grad():
        model.decoder[0].bias.add_(0.5)  # the PyTorch model moves on after export
    with pytest.raises(ExportParityError, match="differs from PyTorch by up to"):
        check_parity(graphs, tmp_path, x, latent_dim=2)
