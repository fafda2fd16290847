from __future__ import annotations

import numpy as np
import pytest

from tests.training.conftest import gaussian_with_outliers
from training.metrics import LatentMoments, auroc, calibrate_threshold, pca_scores, row_mse


def test_threshold_is_the_quantile_of_normal_scores() -> None:
    scores = np.arange(101, dtype=np.float64)  # 0..100: the 0.99 quantile is exactly 99
    threshold = calibrate_threshold(scores, 0.99)
    assert threshold.value == pytest.approx(99.0)
    assert threshold.rows == 101
    assert (scores > threshold.value).sum() == 1


@pytest.mark.parametrize("quantile", [0.0, 1.0, 1.5])
def test_threshold_quantile_must_be_inside_0_1(quantile: float) -> None:
    with pytest.raises(ValueError, match="quantile"):
        calibrate_threshold(np.ones(3), quantile)


def test_planted_outliers_score_auroc_near_one_under_pca() -> None:
    x, y = gaussian_with_outliers(rows=500, features=8, outliers=25)
    # Fit on the normal rows, with fewer components than features: outliers reconstruct badly.
    scores = pca_scores(x[y == 0][:400], x, components=2)
    assert auroc(scores, y) > 0.99


def test_pca_is_exact_on_linear_data() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 3)) @ rng.standard_normal((3, 10))
    assert pca_scores(x, x, components=3).max() < 1e-20
    assert pca_scores(x, x, components=2).mean() > 1e-3


def test_auroc_undefined_for_one_class() -> None:
    assert auroc(np.array([0.1, 0.2]), np.array([0, 0])) is None


def test_row_mse_and_latent_moments() -> None:
    x = np.array([[1.0, 2.0], [0.0, 0.0]])
    np.testing.assert_allclose(row_mse(x, np.zeros_like(x)), [2.5, 0.0])
    moments = LatentMoments()
    moments.add(np.array([[0.0, 1.0], [2.0, 3.0]], dtype=np.float32))
    mean, cov = moments.result()
    assert mean == [1.0, 2.0]
    np.testing.assert_allclose(cov, [[2.0, 2.0], [2.0, 2.0]])


def test_latent_moments_added_in_chunks_match_the_whole_set() -> None:
    # Far from zero and uneven chunks, where a naive running sum of squares would lose digits.
    z = 1e4 + np.random.default_rng(0).standard_normal((5000, 3)) @ [[1, 0.5, 0], [0, 1, 0], [0, 0, 0.1]]
    moments = LatentMoments()
    for chunk in np.array_split(z.astype(np.float32), [1, 7, 1000, 4999]):
        moments.add(chunk)
    mean, cov = moments.result()
    z64 = z.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(mean, z64.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(cov, np.cov(z64, rowvar=False), rtol=1e-9, atol=1e-12)
