"""`python -m training calibrate PACKAGE --data DATA`: adds the percentile curve (score.quantiles) and, for a
table, each feature's share of the error (score.feature_shares, what monitoring compares live rows with) to a
package written before packages stored them, from the same normal validation rows `fit` calibrated its
threshold on. The data must be what the package was trained on: the threshold is recomputed from the
package's own scorer on the re-derived split and must equal the stored one, or nothing is written."""

from __future__ import annotations

import math
import os
from pathlib import Path

from pydantic import ValidationError

from service.manifest import MANIFEST, Manifest
from training.config import FitConfig
from training.data import load_dataset
from training.errors import DataError
from training.metrics import calibrate_threshold, feature_shares, score_quantiles
from training.package import write_json
from training.pipeline import run_graph, split_rows

THRESHOLD_RTOL = 1e-5


def add_quantiles(package: Path, data_path: Path) -> list[float]:
    manifest_path = package / MANIFEST
    manifest = _read(manifest_path)
    if manifest.score.calibration.split != "validation":
        raise DataError(
            f"{package}: calibrated on {manifest.score.calibration.split} scores when it was written, and it "
            "stored their percentile curve then; nothing to add"
        )
    trained = manifest.training.config
    config = FitConfig(
        data=data_path,
        name=manifest.name,
        seed=trained["seed"],
        val_fraction=trained["val_fraction"],
        normal_label=trained.get("normal_label"),
        label_column=trained.get("label_column"),
    )
    size, channels = trained.get("image_size"), trained.get("image_channels")
    data = load_dataset(data_path, config.label_column, tuple(size) if size else None, channels)
    if list(data.shape) != manifest.input.shape:
        raise DataError(f"{data_path}: rows of shape {list(data.shape)}; {package} takes {manifest.input.shape}")
    split = split_rows(data, config)
    scores = run_graph(package, manifest.graphs["scorer"].file, "score", data.x[split.val])
    normal = scores[split.val_is_normal]
    stored = manifest.score.threshold
    again = calibrate_threshold(normal, manifest.score.calibration.quantile).value
    if not math.isclose(again, stored, rel_tol=THRESHOLD_RTOL):
        raise DataError(
            f"{data_path}: not the data {package} was trained on (its validation rows give threshold {again:.6g}, "
            f"the package says {stored:.6g}); nothing written"
        )
    quantiles = score_quantiles(normal)
    added: dict[str, object] = {"quantiles": quantiles}
    if data.kind == "tabular":
        rows = data.x[split.val][split.val_is_normal]
        added["feature_shares"] = feature_shares(run_graph(package, manifest.graphs["scorer"].file, "sq_err", rows))
    updated = manifest.model_copy(update={"score": manifest.score.model_copy(update=added)})
    partial = manifest_path.with_suffix(".json.partial")
    # Only what was written before, and the curve: validating filled in defaults that are not written back.
    write_json(partial, updated.model_dump(mode="json", exclude_unset=True))
    os.replace(partial, manifest_path)  # a reader sees the old manifest or the new one, never half
    return quantiles


def _read(manifest_path: Path) -> Manifest:
    if not manifest_path.is_file():
        raise DataError(f"{manifest_path.parent}: no {MANIFEST}, not a model package")
    try:
        return Manifest.model_validate_json(manifest_path.read_bytes())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "manifest"
        raise DataError(f"{manifest_path}: not a package manifest ({where}: {first['msg']})") from None
