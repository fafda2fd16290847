from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from training.export import ExportParityError, check_parity, export_graphs, graph_specs
from training.models import Autoencoder, ModelSpec, build_model
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


def _member_as_autoencoder(ensemble: Autoencoder, member: int) -> Autoencoder:
    """Member `member` of an ensemble rebuilt as a plain dense Autoencoder with its own slice of the weights."""
    spec = ensemble.spec
    size, widest = spec.member_latents[member], max(spec.member_latents)
    single = build_model(ModelSpec(body="dense", input_shape=spec.input_shape, latent_dim=size, hidden=spec.hidden,
                                   output_activation=spec.output_activation))  # fmt: skip
    enc = [m for m in ensemble.encoder.layers if hasattr(m, "weight")]
    dec = [m for m in ensemble.decoder.layers if hasattr(m, "weight")]
    single_enc = [m for m in single.encoder if isinstance(m, torch.nn.Linear)]
    single_dec = [m for m in single.decoder if isinstance(m, torch.nn.Linear)]
    code = torch.arange(widest) < size
    with torch.no_grad():
        for i, (ours, theirs) in enumerate(zip(enc, single_enc, strict=True)):
            keep = code if i == len(enc) - 1 else slice(None)
            theirs.weight.copy_(ours.weight[member][:, keep].T)
            theirs.bias.copy_(ours.bias[member, 0][keep])
        for i, (ours, theirs) in enumerate(zip(dec, single_dec, strict=True)):
            keep = code if i == 0 else slice(None)
            theirs.weight.copy_(ours.weight[member][keep].T)
            theirs.bias.copy_(ours.bias[member, 0])
    return single.eval()


def test_ensemble_graph_scores_the_mean_of_its_members_errors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    members = {"member_latents": [1, 2, 3], "member_features": [[0, 1, 2], [2, 3, 4], [0, 4, 5]]}
    spec = ModelSpec(
        body="dense", input_shape=[6], latent_dim=6, hidden=[8, 4], output_activation="sigmoid", loss="huber", **members
    )
    model = build_model(spec)
    norm = _norm(6)
    graphs = graph_specs(model, norm)
    x = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32) * 3
    export_graphs(graphs, tmp_path, x, latent_dim=spec.latent_dim)
    check_parity(graphs, tmp_path, x, latent_dim=spec.latent_dim)

    scorer = ort.InferenceSession(str(tmp_path / "scorer.onnx"), providers=["CPUExecutionProvider"])
    x_hat, score, sq_err = scorer.run(None, {"x": x})
    x_norm = (x - norm.offset) / norm.scale
    reconstructions, errors = [], []
    with torch.no_grad():
        for member, features in enumerate(spec.member_features):
            seen = np.zeros_like(x_norm)
            seen[:, features] = x_norm[:, features]  # a member reads its features only
            rebuilt = _member_as_autoencoder(model, member)(torch.from_numpy(seen)).numpy()
            reconstructions.append(rebuilt)
            errors.append(((x_norm - rebuilt) ** 2).mean(axis=1))
    np.testing.assert_allclose(score, np.mean(errors, axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(score, sq_err.mean(axis=1), rtol=1e-5)
    want_x_hat = np.mean(reconstructions, axis=0) * norm.scale + norm.offset
    np.testing.assert_allclose(x_hat, want_x_hat, rtol=1e-4, atol=1e-5)
    # The decoder rebuilds the same mean from the members' codes side by side.
    encoder = ort.InferenceSession(str(tmp_path / "encoder.onnx"), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(tmp_path / "decoder.onnx"), providers=["CPUExecutionProvider"])
    (z,) = encoder.run(None, {"x": x})
    assert z.shape == (40, 6)
    np.testing.assert_allclose(decoder.run(None, {"z": z})[0], x_hat, rtol=1e-4, atol=1e-5)
