"""The percentile curve a package stores (training.metrics.score_quantiles) and the service reads
(service.manifest.Score.percentiles), on a distribution whose percentiles are known; the false-positive rate a
threshold promises, and a small table calibrated out of fold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.manifest import Manifest, Score
from training.config import FitConfig
from training.metrics import QUANTILE_POINTS, auroc_if_enough, calibrate_threshold, score_quantiles
from training.pipeline import fit


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


@pytest.mark.parametrize("rows", [20, 59, 300])
def test_the_false_positive_interval_covers_the_true_rate(rows: int) -> None:
    # Uniform scores: a threshold t lets a new normal row through above it with probability exactly 1 - t.
    rng = np.random.default_rng(rows)
    trials = 4000
    inside, expected = 0, []
    fpr = None
    for _ in range(trials):
        scores = rng.uniform(size=rows)
        threshold = calibrate_threshold(scores, 0.99)
        fpr = threshold.false_positive_rate
        assert fpr is not None
        true_rate = 1.0 - threshold.value
        inside += fpr.low <= true_rate <= fpr.high
        expected.append(fpr.expected)
    # At least the stated 95%, and not vacuous; the expected rate is 1 - E[threshold].
    assert 0.945 <= inside / trials <= 0.995
    assert fpr is not None and fpr.high - fpr.low < 0.25
    true_mean = 1.0 - np.mean([calibrate_threshold(rng.uniform(size=rows), 0.99).value for _ in range(trials)])
    assert np.mean(expected) == pytest.approx(true_mean, abs=0.003)


def test_auroc_needs_enough_rows_of_each_class() -> None:
    scores = np.arange(30.0)
    one_anomaly = np.zeros(30, bool)
    one_anomaly[-1] = True
    value, note = auroc_if_enough(scores, one_anomaly, "validation rows")
    assert value is None
    assert note == "too few anomalies to estimate (1 anomalous and 29 normal validation rows; it needs 10 of each)"
    enough = np.arange(30) >= 15
    value, note = auroc_if_enough(scores, enough, "validation rows")
    assert value == 1.0 and note == "on 15 anomalous and 15 normal validation rows"


@pytest.mark.slow  # six small trainings
# A large validation fraction leaves the model few training rows: the refits get no more than it did.
@pytest.mark.parametrize("val_fraction", [0.1, 0.7])
def test_a_small_table_gets_an_honest_threshold(tmp_path: Path, val_fraction: float) -> None:
    # 150 rows of a correlated Gaussian, no labels: 15 validation rows, far too few for a 0.99 quantile.
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(5, 8))
    draw = lambda n: (rng.normal(size=(n, 5)) @ mixing).astype(np.float32)  # noqa: E731
    data = tmp_path / "small.npz"
    np.savez(data, X=draw(150))
    config = FitConfig(data=data, name="small", models_dir=tmp_path / "models", val_fraction=val_fraction)
    package = fit(config.model_copy(update={"progress": False}))
    manifest = Manifest.model_validate_json((package / "manifest.json").read_bytes())
    calibration = manifest.score.calibration
    assert calibration.split == "out_of_fold" and calibration.folds == 5 and calibration.rows == 150
    fpr = calibration.false_positive_rate
    assert fpr is not None and fpr.low < 0.01 < fpr.high

    # New rows of the same distribution: flagged near the promised 1%, inside the stated interval.
    scorer = ort.InferenceSession(str(package / "scorer.onnx"), providers=["CPUExecutionProvider"])
    fresh = scorer.run(["score"], {"x": draw(20_000)})[0]
    flagged = float((fresh > manifest.score.threshold).mean())
    assert fpr.low <= flagged <= fpr.high and flagged < 0.05
