"""Scores, the anomaly threshold, AUROC and the PCA baseline, all in the model's normalised space."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Threshold:
    value: float
    quantile: float
    rows: int

    def to_json(self, normal_label: str | None) -> dict[str, object]:
        return {
            "threshold": self.value,
            "calibration": {
                "method": "quantile",
                "quantile": self.quantile,
                "split": "validation",
                "rows": self.rows,
                "normal_label": normal_label,
            },
        }


def row_mse(x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    """The anomaly score: per-row mean of squared errors, in float64 so long rows do not lose precision."""
    diff = (x.reshape(len(x), -1).astype(np.float64) - x_hat.reshape(len(x_hat), -1)) ** 2
    return diff.mean(axis=1)


def calibrate_threshold(normal_scores: np.ndarray, quantile: float) -> Threshold:
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"threshold quantile must be in (0, 1), got {quantile}")
    if len(normal_scores) == 0:
        raise ValueError("no normal validation rows to calibrate the threshold on")
    return Threshold(float(np.quantile(normal_scores, quantile)), quantile, len(normal_scores))


# Enough points for a percentile to a tenth of a percent, few enough to keep a manifest small.
QUANTILE_POINTS = 1001


def score_quantiles(normal_scores: np.ndarray) -> list[float]:
    """The normal validation scores at evenly spaced probabilities from 0 to 1 (at most QUANTILE_POINTS of
    them): the service reads a score's percentile off this curve."""
    if len(normal_scores) == 0:
        raise ValueError("no normal validation rows to calibrate percentiles on")
    points = min(QUANTILE_POINTS, max(2, len(normal_scores)))
    return np.quantile(normal_scores.astype(np.float64), np.linspace(0.0, 1.0, points)).tolist()


def auroc(scores: np.ndarray, is_anomaly: np.ndarray) -> float | None:
    """AUROC of the score; None when the rows hold only one class (it is undefined then)."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(is_anomaly)) < 2:
        return None
    return float(roc_auc_score(is_anomaly, scores))


def pca_scores(x_train: np.ndarray, x_eval: np.ndarray, components: int) -> np.ndarray:
    """Per-row reconstruction MSE of PCA fitted on `x_train` with `components` components."""
    from sklearn.decomposition import PCA

    flat_train = x_train.reshape(len(x_train), -1)
    flat_eval = x_eval.reshape(len(x_eval), -1)
    components = min(components, *flat_train.shape)
    pca = PCA(n_components=components, random_state=0).fit(flat_train)
    return row_mse(flat_eval, pca.inverse_transform(pca.transform(flat_eval)))


def latent_moments(z: np.ndarray) -> tuple[list[float], list[list[float]]]:
    """Mean and covariance of latent codes: enough to sample new codes from N(mean, cov)."""
    z64 = z.astype(np.float64)
    cov = np.atleast_2d(np.cov(z64, rowvar=False)) if len(z64) > 1 else np.eye(z64.shape[1])
    return z64.mean(axis=0).tolist(), cov.tolist()
