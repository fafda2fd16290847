"""Five anomaly-detection tables built from scikit-learn's bundled data the way ODDS builds its sets (one
class made rare), for checking the tabular recipe on data it was not chosen on:

    python bench/sklearn_odds_sets.py /tmp/odds-like
    python -m training evaluate tabular --data /tmp/odds-like --out /tmp/odds-like/report

digits0 / digits8: 8x8 digit images as 64-column rows, every other digit normal, 40 of the one digit as
anomalies; wdbc: benign tumours normal, 10 malignant (ODDS' WDBC); breast_all: every malignant tumour (37%:
heavy contamination); wine2: cultivars 0 and 1 normal, 10 of cultivar 2. Seeded: the same files every time.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn import datasets


def _rare(x: np.ndarray, is_rare: np.ndarray, keep: int | None, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    rare = np.flatnonzero(is_rare)
    if keep is not None:
        rare = rng.choice(rare, keep, replace=False)
    rows = np.concatenate([np.flatnonzero(~is_rare), rare])
    return x[rows].astype(np.float64), is_rare[rows].astype(np.int64)


def write(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    digits, cancer, wine = datasets.load_digits(), datasets.load_breast_cancer(), datasets.load_wine()
    sets = {
        "digits0": _rare(digits.data, digits.target == 0, 40, rng),
        "wdbc": _rare(cancer.data, cancer.target == 0, 10, rng),
        "breast_all": _rare(cancer.data, cancer.target == 0, None, rng),
        "wine2": _rare(wine.data, wine.target == 2, 10, rng),
        "digits8": _rare(digits.data, digits.target == 8, 40, rng),
    }
    written = []
    for name, (x, y) in sets.items():
        np.savez(folder / f"{name}.npz", X=x, y=y)
        written.append(folder / f"{name}.npz")
    return written


if __name__ == "__main__":
    for path in write(Path(sys.argv[1] if len(sys.argv) > 1 else "odds-like")):
        print(path)
