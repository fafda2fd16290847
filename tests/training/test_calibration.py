"""The percentile curve a package stores (training.metrics.score_quantiles) and the service reads
(service.manifest.Score.percentiles), on a distribution whose percentiles are known."""

from __future__ import annotations

import numpy as np
import pytest

from service.manifest import Score
from training.metrics import QUANTILE_POINTS, calibrate_threshold, score_quantiles


def test_percentiles_of_exponential_scores_match_their_distribution() -> None:
    rng = np.random.default_rng(0)
    normal = rng.exponential(size=20_000)
    threshold = calibrate_threshold(normal, 0.99)
    curve = Score(
        definition="exponential scores",
        threshold=threshold.value,
        calibration=threshold.calibration(normal_label=None),
        quantiles=score_quantiles(normal),
    )
    assert len(curve.quantiles or []) == QUANTILE_POINTS

    fresh = rng.exponential(size=2000)
    expected = 100 * (1 - np.exp(-fresh))  # the exponential's CDF
    got = curve.percentiles(fresh)
    assert got is not None
    np.testing.assert_allclose(got, expected, atol=1.5)
    # Scores beyond the validation range are at the ends of the scale, not extrapolated past them.
    assert curve.percentiles(np.array([-1.0, 1e9])).tolist() == [0.0, 100.0]


def test_few_rows_keep_every_score_and_need_two() -> None:
    assert score_quantiles(np.array([3.0, 1.0, 2.0])) == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="no normal validation rows"):
        score_quantiles(np.array([]))
