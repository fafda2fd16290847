"""`python -m training calibrate PACKAGE --data DATA`: adds the percentile curve (score.quantiles) to a
package written before packages stored it, from the same normal validation rows `fit` calibrated its
threshold on. The data must be what the package was trained on: the threshold is recomputed from the
package's own scorer on the re-derived split and must equal the stored one, or nothing is written."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from training.config import FitConfig
from training.data import DataError, load_dataset
from training.metrics import calibrate_threshold, score_quantiles
from training.pipeline import run_graph, split_rows

THRESHOLD_RTOL = 1e-5


def add_quantiles(package: Path, data_path: Path) -> list[float]:
    manifest_path = package / "manifest.json"
    if not manifest_path.is_file():
        raise DataError(f"{package}: no manifest.json, not a model package")
    manifest = json.loads(manifest_path.read_text())
    trained = manifest["training"]["config"]
    config = FitConfig(
        data=data_path,
        name=manifest["name"],
        seed=trained["seed"],
        val_fraction=trained["val_fraction"],
        normal_label=trained.get("normal_label"),
        label_column=trained.get("label_column"),
    )
    size, channels = trained.get("image_size"), trained.get("image_channels")
    data = load_dataset(data_path, config.label_column, tuple(size) if size else None, channels)
    if list(data.shape) != manifest["input"]["shape"]:
        raise DataError(f"{data_path}: rows of shape {list(data.shape)}; {package} takes {manifest['input']['shape']}")
    split = split_rows(data, config)
    scores = run_graph(package, manifest["graphs"]["scorer"]["file"], "score", data.x[split.val])
    normal = scores[split.val_is_normal]
    stored = manifest["score"]["threshold"]
    again = calibrate_threshold(normal, manifest["score"]["calibration"]["quantile"]).value
    if not math.isclose(again, stored, rel_tol=THRESHOLD_RTOL):
        raise DataError(
            f"{data_path}: not the data {package} was trained on (its validation rows give threshold {again:.6g}, "
            f"the package says {stored:.6g}); nothing written"
        )
    quantiles = score_quantiles(normal)
    manifest["score"]["quantiles"] = quantiles
    partial = manifest_path.with_suffix(".json.partial")
    partial.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(partial, manifest_path)  # a reader sees the old manifest or the new one, never half
    return quantiles
