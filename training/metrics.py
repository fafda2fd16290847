"""Scores, the anomaly threshold, AUROC and the PCA baseline, all in the model's normalised space."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.labels import MIN_PER_CLASS
from service.labels import auroc as rank_auroc
from service.manifest import Calibration, FalsePositiveRate


@dataclass
class Threshold:
    value: float
    quantile: float
    rows: int
    split: str = "validation"  # or "out_of_fold": Calibration.split
    folds: int | None = None
    false_positive_rate: FalsePositiveRate | None = None

    def calibration(self, normal_label: str | None) -> Calibration:
        """The manifest's `score.calibration`: the quantile of `rows` normal scores."""
        return Calibration(
            method="quantile",
            quantile=self.quantile,
            split=self.split,
            rows=self.rows,
            normal_label=normal_label,
            folds=self.folds,
            false_positive_rate=self.false_positive_rate,
        )


def describe_calibration(calibration: Calibration) -> str:
    """One line for people: what the threshold is the quantile of, and the false-positive rate it gives."""
    rows = (
        "normal validation rows"
        if calibration.split == "validation"
        else f"normal rows scored out of fold ({calibration.folds} refits)"
    )
    text = f"quantile {calibration.quantile} of {calibration.rows} {rows}"
    fpr = calibration.false_positive_rate
    if fpr is not None:
        text += (
            f"; false-positive rate {100 * fpr.expected:.2g}% "
            f"({100 * fpr.confidence:g}% interval {100 * fpr.low:.2g}-{100 * fpr.high:.2g}%)"
        )
    return text


def row_mse(x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    """The anomaly score: per-row mean of squared errors, in float64 so long rows do not lose precision."""
    flat, flat_hat = x.reshape(len(x), -1), x_hat.reshape(len(x_hat), -1)
    scores = np.empty(len(flat))
    # A block of rows at a time: float64 errors of every row at once would be twice the rows' float32 size,
    # twice over. Each row's mean is the same however the rows are blocked.
    for start in range(0, len(flat), MSE_BLOCK_ROWS):
        rows = slice(start, start + MSE_BLOCK_ROWS)
        scores[rows] = ((flat[rows].astype(np.float64) - flat_hat[rows]) ** 2).mean(axis=1)
    return scores


MSE_BLOCK_ROWS = 8192


def calibrate_threshold(
    normal_scores: np.ndarray, quantile: float, split: str = "validation", folds: int | None = None
) -> Threshold:
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"threshold quantile must be in (0, 1), got {quantile}")
    if len(normal_scores) == 0:
        raise ValueError("no normal validation rows to calibrate the threshold on")
    value = float(np.quantile(normal_scores, quantile))
    return Threshold(value, quantile, len(normal_scores), split, folds, false_positive_rate(normal_scores, value))


FPR_CONFIDENCE = 0.95


def false_positive_rate(
    normal_scores: np.ndarray, threshold: float, confidence: float = FPR_CONFIDENCE
) -> FalsePositiveRate:
    """The chance that a new normal row scores above `threshold`, from the threshold's place among `n`
    normal scores. At the j-th smallest score, F(threshold) is the j-th order statistic of n uniforms,
    Beta(j, n - j + 1), so the false-positive rate 1 - F is Beta(n - j + 1, j) whatever the scores'
    distribution. A threshold interpolated between the j-th and the next score has a rate between theirs:
    the interval runs from the next one's low end to the j-th one's high end."""
    from scipy.stats import beta

    n = len(normal_scores)
    below = int(np.count_nonzero(normal_scores <= threshold))  # j
    tail = (1.0 - confidence) / 2
    high = float(beta.ppf(1.0 - tail, n - below + 1, max(below, 1)))
    low = float(beta.ppf(tail, n - below, below + 1)) if below < n else 0.0
    # Where between its neighbours the threshold lies, for the expected rate.
    ordered = np.sort(normal_scores)
    lower, upper = ordered[max(below, 1) - 1], ordered[min(below, n - 1)]
    weight = 0.0 if upper <= lower else float((threshold - lower) / (upper - lower))
    expected = ((1 - weight) * (n - below + 1) + weight * (n - below)) / (n + 1)
    return FalsePositiveRate(expected=expected, low=low, high=high, confidence=confidence)


# Enough points for a percentile to a tenth of a percent, few enough to keep a manifest small.
QUANTILE_POINTS = 1001


def score_quantiles(normal_scores: np.ndarray) -> list[float]:
    """The normal validation scores at evenly spaced probabilities from 0 to 1 (at most QUANTILE_POINTS of
    them): the service reads a score's percentile off this curve."""
    if len(normal_scores) == 0:
        raise ValueError("no normal validation rows to calibrate percentiles on")
    points = min(QUANTILE_POINTS, max(2, len(normal_scores)))
    return np.quantile(normal_scores.astype(np.float64), np.linspace(0.0, 1.0, points)).tolist()


def feature_shares(sq_err: np.ndarray) -> list[float]:
    """Each feature's share of a row's squared error, averaged over the rows (rows without error left out):
    where the error of normal rows lies, for the service's monitoring to compare live rows with."""
    parts = sq_err.reshape(len(sq_err), -1).astype(np.float64)
    totals = parts.sum(axis=1, keepdims=True)
    kept = totals[:, 0] > 0
    if not kept.any():
        return np.full(parts.shape[1], 1.0 / parts.shape[1]).tolist()
    return (parts[kept] / totals[kept]).mean(axis=0).tolist()


# AUROC from fewer rows of either class is mostly noise; the service says the same of scored rows.
MIN_AUROC_ROWS = MIN_PER_CLASS


def auroc_if_enough(scores: np.ndarray, is_anomaly: np.ndarray, rows: str) -> tuple[float | None, str]:
    """AUROC when `rows` (in words) hold at least MIN_AUROC_ROWS of each class, and a note of what it was
    measured on, or why it was not."""
    anomalous = int(np.count_nonzero(is_anomaly))
    normal = len(is_anomaly) - anomalous
    counts = f"{anomalous} anomalous and {normal} normal {rows}"
    if min(anomalous, normal) < MIN_AUROC_ROWS:
        few = "anomalies" if anomalous < MIN_AUROC_ROWS else "normal rows"
        return None, f"too few {few} to estimate ({counts}; it needs {MIN_AUROC_ROWS} of each)"
    return auroc(scores, is_anomaly), f"on {counts}"


def auroc(scores: np.ndarray, is_anomaly: np.ndarray) -> float | None:
    """AUROC of the score; None when the rows hold only one class (it is undefined then)."""
    if len(np.unique(is_anomaly)) < 2:
        return None
    return rank_auroc(scores, is_anomaly)


def pca_scores(x_train: np.ndarray, x_eval: np.ndarray, components: int) -> np.ndarray:
    """Per-row reconstruction MSE of PCA fitted on `x_train` with `components` components."""
    from sklearn.decomposition import PCA

    flat_train = x_train.reshape(len(x_train), -1)
    flat_eval = x_eval.reshape(len(x_eval), -1)
    components = min(components, *flat_train.shape)
    pca = PCA(n_components=components, random_state=0).fit(flat_train)
    return row_mse(flat_eval, pca.inverse_transform(pca.transform(flat_eval)))


class LatentMoments:
    """Mean and covariance of latent codes (enough to sample new codes from N(mean, cov)), added a chunk of
    codes at a time: the codes of a large training set need not be in memory at once. Chunks are merged with
    Chan, Golub and LeVeque's pairwise update in float64, as stable as centring the whole set first."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = np.zeros(0)
        self.scatter = np.zeros((0, 0))  # sum over codes of the outer product of their deviation from the mean

    def add(self, z: np.ndarray) -> None:
        if len(z) == 0:
            return
        z64 = z.reshape(len(z), -1).astype(np.float64)
        mean = z64.mean(axis=0)
        deviation = z64 - mean
        scatter = deviation.T @ deviation
        if self.count == 0:
            self.count, self.mean, self.scatter = len(z64), mean, scatter
            return
        total = self.count + len(z64)
        delta = mean - self.mean
        self.mean = self.mean + delta * (len(z64) / total)
        self.scatter = self.scatter + scatter + np.outer(delta, delta) * (self.count * len(z64) / total)
        self.count = total

    def result(self) -> tuple[list[float], list[list[float]]]:
        if self.count == 0:
            raise ValueError("no latent codes to take the moments of")
        cov = self.scatter / (self.count - 1) if self.count > 1 else np.eye(len(self.mean))
        return self.mean.tolist(), cov.tolist()
