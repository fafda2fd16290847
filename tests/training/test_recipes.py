"""The defaults chosen from the data, and the box scaling tables are trained in."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from training import recipes
from training.cli import main
from training.config import FitConfig
from training.data import DataError, Dataset, InputKind, load_dataset
from training.pipeline import split_rows
from training.recipes import (
    IMAGE_MIN_STEPS,
    SMALL_IMAGE_SET,
    TABULAR_EPOCHS,
    TABULAR_MEMBERS,
    fit_normalisation,
    model_spec,
    resolve_training,
)
from training.trainer import Rows, _kept, _trimmed_mean


def _dataset(x: np.ndarray, kind: InputKind = "tabular") -> Dataset:
    return Dataset(x=x.astype(np.float32), y=None, kind=kind, source=Path("data.npz"), sha256="")


def _resolved(data: Dataset, **flags: object) -> FitConfig:
    config = FitConfig(data=data.source, name="m", **flags)  # type: ignore[arg-type]
    return resolve_training(config, data, len(split_rows(data, config).train))


def _images(rows: int) -> Dataset:
    return _dataset(np.random.default_rng(0).integers(0, 256, size=(rows, 8, 8)), kind="image")


def test_small_image_sets_get_a_small_dense_denoising_model() -> None:
    small = _images(SMALL_IMAGE_SET)  # 10% goes to validation: under the limit
    config = _resolved(small)
    spec = model_spec(config, small)
    assert (spec.body, spec.hidden, config.noise) == ("dense", [128], 0.5)
    assert spec.output_activation == "sigmoid" and spec.latent_dim == 16


def test_large_image_sets_get_a_convolutional_model() -> None:
    large = _images(2 * SMALL_IMAGE_SET)
    config = _resolved(large)
    spec = model_spec(config, large)
    assert (spec.body, config.noise) == ("conv", 0.0)
    # Enough epochs for IMAGE_MIN_STEPS batches of 128 from the 90% of rows that train.
    assert config.epochs == math.ceil(IMAGE_MIN_STEPS / math.ceil(0.9 * len(large.x) / 128))


def test_flags_override_the_image_recipe() -> None:
    small = _images(100)
    config = _resolved(small, arch="conv", noise=0.0)
    assert (model_spec(config, small).body, config.noise) == ("conv", 0.0)
    config = _resolved(small, hidden=[32, 16])
    assert model_spec(config, small).hidden == [32, 16]
    # Asking for the architecture the recipe picks anyway keeps the rest of the recipe...
    config = _resolved(small, arch="dense")
    assert (model_spec(config, small).hidden, config.noise) == ([128], 0.5)
    # ...and conv channels mean a conv model.
    config = _resolved(small, channels=[8, 16])
    assert (model_spec(config, small).body, model_spec(config, small).channels, config.noise) == ("conv", [8, 16], 0.0)


def test_patience_follows_the_number_of_epochs() -> None:
    table = _dataset(np.random.default_rng(0).standard_normal((50, 3)))
    assert (_resolved(table, epochs=30).patience, _resolved(table, epochs=100).patience) == (5, 10)
    assert _resolved(table).patience == (5 if TABULAR_EPOCHS <= 30 else 10)
    assert _resolved(table, epochs=100, patience=3).patience == 3


def test_scaling_is_for_tables_only() -> None:
    with pytest.raises(DataError, match="--scaling is for tables"):
        _resolved(_images(10), scaling="minmax")


def test_tables_default_to_box_scaling_with_bounded_reconstructions() -> None:
    table = _dataset(np.random.default_rng(0).standard_normal((500, 6)))
    config = _resolved(table)
    assert config.scaling == "box"
    assert model_spec(config, table).output_activation == "sigmoid"
    faithful = _resolved(table, scaling="minmax")
    assert model_spec(faithful, table).output_activation == "identity"


def test_tables_default_to_an_ensemble_of_feature_bagged_members_of_growing_codes() -> None:
    table = _dataset(np.random.default_rng(0).standard_normal((500, 12)))
    spec = model_spec(_resolved(table), table)
    assert len(spec.member_latents) == len(spec.member_features) == TABULAR_MEMBERS
    assert spec.member_latents[0] == 1 and spec.member_latents[-1] == 4 == spec.widest_code  # 12 features / 3
    assert spec.member_latents == sorted(spec.member_latents) and spec.latent_dim == sum(spec.member_latents)
    assert all(len(f) == 6 == len(set(f)) and min(f) >= 0 and max(f) < 12 for f in spec.member_features)
    assert len({tuple(f) for f in spec.member_features}) > 1
    assert spec.loss == "huber"
    other_seed = model_spec(_resolved(table, seed=1), table)
    assert other_seed.member_features != spec.member_features
    single = model_spec(_resolved(table, members=1), table)
    assert (single.member_latents, single.member_features, single.latent_dim) == ([], [], 4)


def test_tables_train_trimmed_and_images_do_not() -> None:
    table = _dataset(np.random.default_rng(0).standard_normal((500, 6)))
    assert _resolved(table).trim == recipes.TABULAR_TRIM == 0.2
    assert _resolved(table, trim=0.0).trim == 0.0
    assert _resolved(_images(200)).trim == 0.0


def test_trimming_leaves_the_worst_rows_out_of_the_step() -> None:
    losses = torch.tensor([5.0, 1.0, 9.0, 2.0, 3.0, 4.0, 8.0, 6.0, 7.0, 0.0])
    assert sorted(_kept(losses, 0.2).tolist()) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert torch.equal(_kept(losses, 0.0), losses) and torch.equal(_kept(losses, 0.05), losses)  # none to drop
    # The trimmed mean is what the step differentiates: the two worst rows get no gradient.
    rows = losses.clone().requires_grad_(True)
    _trimmed_mean(rows, 0.2).backward()
    assert rows.grad is not None and rows.grad[[2, 6]].tolist() == [0.0, 0.0] and rows.grad.sum() == 1.0


def test_ensembles_are_for_tables_only() -> None:
    with pytest.raises(DataError, match="--members is for tables"):
        _resolved(_images(10), members=3)
    table = _dataset(np.random.default_rng(0).standard_normal((50, 6)))
    with pytest.raises(DataError, match="built of dense autoencoders"):
        model_spec(_resolved(table, arch="vae", members=3), table)
    assert model_spec(_resolved(table, arch="vae"), table).member_latents == []  # a VAE asked for: one model
    dense = model_spec(_resolved(table, arch="dense", latent=2), table)  # so is a dense one
    assert (dense.member_latents, dense.latent_dim) == ([], 2)
    assert len(model_spec(_resolved(table, arch="dense", members=3), table).member_latents) == 3
    with pytest.raises(DataError, match="--members must be at least 1"):
        model_spec(_resolved(table, members=0), table)


def test_minmax_scaling_reaches_the_package(tabular_npz: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    args = ["fit", "--data", str(tabular_npz), "--name", "t", "--models-dir", str(models), "--scaling", "minmax"]
    assert main([*args, "--epochs", "2", "--quiet"]) == 0
    manifest = json.loads((models / "t" / "1" / "manifest.json").read_text())
    assert manifest["preprocessing"]["kind"] == "minmax"
    assert manifest["architecture"]["output_activation"] == "identity"
    with pytest.raises(SystemExit) as stopped:
        main([*args[:-1], "bogus"])
    assert stopped.value.code == 2


def test_box_scaling_maps_the_central_75_percent_onto_the_unit_interval() -> None:
    rng = np.random.default_rng(0)
    column = rng.standard_normal(1001)
    mostly_zero = np.where(np.arange(1001) % 10 == 0, rng.standard_normal(1001), 0.0)
    constant = np.full(1001, 3.0)
    x = np.stack([column, mostly_zero, constant], axis=1)
    norm = fit_normalisation(_dataset(x), np.arange(len(x)), "box")
    scaled = norm.apply(x.astype(np.float32))
    assert norm.kind == "box"
    assert np.mean((scaled[:, 0] >= 0) & (scaled[:, 0] <= 1)) == pytest.approx(0.75, abs=0.01)
    # 90% zeros: the 12.5th and 87.5th percentiles coincide, so the column's spread is the scale.
    assert norm.scale[1] == pytest.approx(mostly_zero.std(), rel=1e-5)
    assert norm.scale[2] == 1.0 and np.all(scaled[:, 2] == 0.0)


@pytest.mark.parametrize("scaling", ["box", "minmax", "standardise"])
def test_a_table_of_constant_columns_is_refused(scaling: str) -> None:
    x = np.tile([[1.0, 2.0, 3.0]], (300, 1))
    with pytest.raises(DataError, match="every feature is constant over the 300 training rows"):
        fit_normalisation(_dataset(x), np.arange(len(x)), scaling)


def test_the_command_line_refuses_a_constant_table_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "constant.npz"
    np.savez(data, X=np.ones((300, 4)))
    models = tmp_path / "models"
    assert main(["fit", "--data", str(data), "--name", "constant", "--models-dir", str(models), "--quiet"]) == 2
    assert "every feature is constant" in capsys.readouterr().err
    assert not any(models.rglob("manifest.json"))


@pytest.mark.parametrize(("scaling", "low", "high"), [("minmax", 0.0, 1.0), ("standardise", None, None)])
def test_other_scalings(scaling: str, low: float | None, high: float | None) -> None:
    x = np.random.default_rng(1).standard_normal((300, 4)) * 5 + 2
    scaled = fit_normalisation(_dataset(x), np.arange(len(x)), scaling).apply(x.astype(np.float32))
    if scaling == "minmax":
        assert scaled.min() == pytest.approx(low, abs=1e-6) and scaled.max() == pytest.approx(high, abs=1e-6)
    else:
        np.testing.assert_allclose(scaled.mean(axis=0), 0, atol=1e-5)
        np.testing.assert_allclose(scaled.std(axis=0), 1, atol=1e-4)


@pytest.mark.parametrize("kind", ["box", "minmax", "standardise", "image"])
def test_normalisation_fitted_on_row_blocks_is_that_of_a_copy_of_the_rows(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fit_normalisation reads the training rows a block at a time instead of copying them: the numbers must
    # not move by a bit, in blocks of 7 rows here, for the committed models to be reproducible.
    rng = np.random.default_rng(2)
    x = rng.standard_normal((500, 5)) * [1, 10, 1e3, 0.1, 1] + [0, 5, 1e4, 0, 0]
    x[:, 4] = np.where(np.arange(500) % 10 == 0, x[:, 4], 0.0)  # flat between the box edges
    data = _dataset(255 * np.abs(x) if kind == "image" else x, "image" if kind == "image" else "tabular")
    rows = np.sort(rng.choice(500, 400, replace=False))
    scaling = None if kind == "image" else kind
    copy = fit_normalisation(replace(data, x=data.x[rows]), np.arange(len(rows)), scaling)
    monkeypatch.setattr(recipes, "BLOCK_ROWS", 7)

    blocked = fit_normalisation(data, rows, scaling)

    assert blocked.offset.tobytes() == copy.offset.tobytes() and blocked.scale.tobytes() == copy.scale.tobytes()
    if kind == "standardise":
        # Before the float32 rounding too, on values whose float64 sums are inexact.
        wide = (x * 10 ** rng.uniform(-6, 6, size=x.shape)).astype(np.float32)
        mean, std = recipes._mean_and_std(wide, rows)
        assert mean.tobytes() == wide[rows].astype(np.float64).mean(axis=0).tobytes()
        assert std.tobytes() == wide[rows].astype(np.float64).std(axis=0).tobytes()
    # Normalising a gathered copy in place, and each training batch as it is drawn, give apply's numbers.
    want = blocked.apply(data.x[rows])
    assert blocked.apply_to_rows(data.x, rows).tobytes() == want.tobytes()
    positions = torch.from_numpy(rng.permutation(len(rows))[:50])
    batch = Rows(data.x, rows, blocked.offset, blocked.scale)[positions]
    assert batch.numpy().tobytes() == want[positions.numpy()].tobytes()


@pytest.mark.slow  # the default recipe, trained in full
@pytest.mark.parametrize("members", [None, "1"], ids=["ensemble", "single"])
def test_box_scaled_package_bounds_reconstructions_and_scores_in_box_space(
    tabular_npz: Path, tmp_path: Path, members: str | None
) -> None:
    models = tmp_path / "models"
    flags = [] if members is None else ["--members", members]
    assert main(["fit", "--data", str(tabular_npz), "--name", "t", "--models-dir", str(models), "--quiet", *flags]) == 0
    manifest = json.loads((models / "t" / "1" / "manifest.json").read_text())
    offset = np.array(manifest["preprocessing"]["offset"])
    scale = np.array(manifest["preprocessing"]["scale"])
    # The manifest's box is the training rows' (label 0 only) 12.5th..87.5th percentile band.
    x, y = np.load(tabular_npz)["X"], np.load(tabular_npz)["y"]
    rows = split_rows(load_dataset(tabular_npz), FitConfig(data=tabular_npz, name="t")).train
    np.testing.assert_allclose(offset, np.quantile(x[rows], 0.125, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(offset + scale, np.quantile(x[rows], 0.875, axis=0), rtol=1e-5, atol=1e-5)

    probe = np.concatenate([x[:5], x[y == 1][:5] * 10]).astype(np.float32)  # typical rows and far beyond
    scorer = ort.InferenceSession(str(models / "t" / "1" / "scorer.onnx"), providers=["CPUExecutionProvider"])
    x_hat, score, sq_err = scorer.run(["x_hat", "score", "sq_err"], {"x": probe})
    assert np.all(x_hat >= offset - 1e-4) and np.all(x_hat <= offset + scale + 1e-4)
    np.testing.assert_allclose(score, sq_err.mean(axis=1), rtol=1e-5)
    error_of_x_hat = ((((probe - offset) / scale) - (x_hat - offset) / scale) ** 2).mean(axis=1)
    if members == "1":
        np.testing.assert_allclose(score, error_of_x_hat, rtol=1e-4, atol=1e-6)
    else:
        # The mean of the members' errors is the error of their mean reconstruction plus their spread.
        assert np.all(score >= error_of_x_hat * (1 - 1e-4) - 1e-6)
    assert score[5:].min() > score[:5].max()
