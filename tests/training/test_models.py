from __future__ import annotations

import pytest
import torch

from training.models import ModelSpec, build_model


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec(body="dense", input_shape=[6], latent_dim=2, hidden=[8, 4]),
        ModelSpec(
            body="dense",
            input_shape=[8, 8],
            latent_dim=3,
            hidden=[16],
            output_activation="sigmoid",
            loss="bce",
        ),
        ModelSpec(body="conv", input_shape=[28, 28], latent_dim=4, channels=[4, 8], output_activation="sigmoid"),
        ModelSpec(body="conv", input_shape=[7, 9, 3], latent_dim=5, channels=[4, 4, 4], output_activation="sigmoid"),
        ModelSpec(body="dense", input_shape=[10], latent_dim=2, hidden=[8], variational=True),
        ModelSpec(body="conv", input_shape=[8, 8], latent_dim=2, channels=[4], variational=True),
    ],
    ids=["dense-tab", "dense-img-bce", "conv-28", "conv-odd-rgb", "vae-dense", "vae-conv"],
)
def test_shapes_round_trip(spec: ModelSpec) -> None:
    model = build_model(spec).eval()
    x = torch.rand(3, *spec.input_shape)
    mean, logvar = model.encode(x)
    assert mean.shape == (3, spec.latent_dim)
    assert (logvar is not None) == spec.variational
    assert model.decode(mean).shape == x.shape
    loss = model.loss(x, x)
    assert loss.shape == (3,) and torch.isfinite(loss).all()


def test_sigmoid_output_stays_in_unit_range() -> None:
    spec = ModelSpec(body="dense", input_shape=[5], latent_dim=2, hidden=[4], output_activation="sigmoid", loss="bce")
    out = build_model(spec).decode(torch.randn(10, 2) * 100)
    assert float(out.detach().min()) >= 0.0 and float(out.detach().max()) <= 1.0


def test_bce_without_sigmoid_is_refused() -> None:
    with pytest.raises(ValueError, match="sigmoid"):
        build_model(ModelSpec(body="dense", input_shape=[5], latent_dim=2, loss="bce"))


def test_vae_training_loss_includes_kl() -> None:
    torch.manual_seed(0)
    spec = ModelSpec(body="dense", input_shape=[4], latent_dim=2, hidden=[4], variational=True, beta=0.0)
    model = build_model(spec).eval()
    x = torch.rand(5, 4)
    without_kl = model.loss(x, x)
    model.spec.beta = 1.0
    assert torch.all(model.loss(x, x) >= without_kl)
