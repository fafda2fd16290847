"""The label column a table was trained with: which labels mean an anomaly, and how well the scores of
labelled rows separate the two classes (AUROC).

One rule for training and serving: with a normal label, a row whose label equals it is normal and any other
labelled row an anomaly (numbers compare as numbers, so "0" and "0.0" are the same label); without one,
labels must be 0/1 anomaly flags (1: anomaly), and other labels say nothing. Rows whose label is empty say
nothing either. Torch-free and importing nothing else of the service, as service.manifest: training may use it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Fewer rows of a class than this leave the AUROC too uncertain to show (one anomaly among many normal rows
# makes it 0 or 1 by chance alone).
MIN_PER_CLASS = 10
# Text labels read as 0/1 flags, as pyarrow's CSV reader reads booleans.
_FLAGS = {"true": 1.0, "false": 0.0}


def anomalous(labels: Sequence[Any] | np.ndarray, normal_label: str | None) -> np.ndarray | None:
    """Per label, whether it marks an anomaly; None when the labels cannot say (no normal label, and labels
    other than 0 and 1). Empty labels (None, NaN, "") are False here: see `known`."""
    numbers = _as_numbers(labels)
    held = _known(labels, numbers)
    if normal_label is not None:
        wanted = _number(normal_label)
        if numbers is not None and wanted is not None:
            return held & (numbers != wanted)
        return held & np.array([str(label) != normal_label for label in _values(labels)], dtype=bool)
    if numbers is None or not set(np.unique(numbers[held])) <= {0.0, 1.0}:
        return None
    return held & (numbers == 1.0)


def known(labels: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Per label, whether it holds one (not None, NaN or empty text)."""
    return _known(labels, _as_numbers(labels))


def _known(labels: Sequence[Any] | np.ndarray, numbers: np.ndarray | None) -> np.ndarray:
    if numbers is not None:
        return ~np.isnan(numbers)
    return np.array([label is not None and str(label).strip() != "" for label in _values(labels)], dtype=bool)


def _values(labels: Sequence[Any] | np.ndarray) -> list[Any]:
    return labels.tolist() if isinstance(labels, np.ndarray) else list(labels)


def _as_numbers(labels: Sequence[Any] | np.ndarray) -> np.ndarray | None:
    """The labels as float64 (empty ones NaN) when every one is a number, a boolean or empty; else None."""
    if isinstance(labels, np.ndarray) and labels.dtype.kind in "biuf":
        return labels.astype(np.float64)
    values = []
    for label in _values(labels):
        value = math.nan if label is None or (isinstance(label, str) and not label.strip()) else _number(label)
        if value is None:
            return None
        values.append(value)
    return np.asarray(values, dtype=np.float64)


def _number(label: Any) -> float | None:
    if isinstance(label, bool | int | float | np.number):
        try:
            return float(label)
        except OverflowError:  # an integer past float64's range is no label anyone means as a number
            return None
    if not isinstance(label, str):
        return None
    text = label.strip()
    if text.lower() in _FLAGS:
        return _FLAGS[text.lower()]
    # float() also reads "1_0", "nan" and non-ASCII digits, which no CSV writer means as a number label.
    if not text.isascii() or "_" in text or text.lower().lstrip("+-") in ("nan", "inf", "infinity"):
        return None
    try:
        return float(text)
    except ValueError:
        return None


def auroc(scores: np.ndarray, is_anomaly: np.ndarray) -> float:
    """The area under the ROC curve of `scores` against the classes (both present): the chance that an
    anomaly scores above a normal row, ties counting half (Mann-Whitney U over average ranks)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(is_anomaly, dtype=bool)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # Average rank of each distinct score: ranks first+1 .. first+count share their mean.
    first = np.cumsum(counts) - counts
    ranks = (first + (counts + 1) / 2.0)[inverse]
    anomalies, normal = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - anomalies * (anomalies + 1) / 2.0) / (anomalies * normal))


@dataclass(frozen=True)
class Separation:
    """How the scores of labelled rows separate the classes."""

    column: str
    normal: int  # rows labelled normal
    anomalous: int  # rows labelled anomalous
    unlabelled: int  # rows whose label is empty
    auroc: float | None  # None: see `note`
    note: str | None  # why there is no AUROC

    def as_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "normal": self.normal,
            "anomalous": self.anomalous,
            "unlabelled": self.unlabelled,
            "auroc": self.auroc,
            "note": self.note,
        }


def separation(scores: np.ndarray, labels: Sequence[Any], column: str, normal_label: str | None) -> Separation:
    """The counts of each class among `labels` (one per score) and, with at least MIN_PER_CLASS rows of each,
    the AUROC of the scores; else a note that says why there is none. Linear but for a sort: a caller with
    many rows runs it off the event loop."""
    flags = anomalous(labels, normal_label)
    held = known(labels)
    unlabelled = int((~held).sum())
    if flags is None:
        note = "no normal label was recorded, and the labels are not 0/1 anomaly flags"
        return Separation(column, 0, 0, unlabelled, None, note)
    anomalies, normal = int((flags & held).sum()), int((~flags & held).sum())
    if min(anomalies, normal) < MIN_PER_CLASS:
        # In the words training uses for its validation rows (training.metrics).
        few = "anomalies" if anomalies < MIN_PER_CLASS else "normal rows"
        counts = f"{anomalies} anomalous and {normal} normal rows"
        note = f"too few {few} to estimate ({counts}; it needs {MIN_PER_CLASS} of each)"
        return Separation(column, normal, anomalies, unlabelled, None, note)
    return Separation(column, normal, anomalies, unlabelled, auroc(scores[held], flags[held]), None)
