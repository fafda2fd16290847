"""Each score's percentile among the normal validation scores, from the curve in the package's manifest."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.anyio


async def test_percentiles_are_read_off_the_manifest_curve(
    client: httpx.AsyncClient, models_dir: Path, tabular_rows: np.ndarray
) -> None:
    far = tabular_rows[:1] + 100.0  # far outside what the model saw: above every validation score
    rows = np.concatenate([tabular_rows, far])
    body = (await client.post("/models/tab/versions/1/score", json={"inputs": rows.tolist()})).json()

    quantiles = json.loads((models_dir / "tab" / "1" / "manifest.json").read_text())["score"]["quantiles"]
    expected = np.interp(body["scores"], quantiles, np.linspace(0, 100, len(quantiles)))
    np.testing.assert_allclose(body["percentiles"], expected, rtol=1e-5, atol=1e-4)
    assert body["percentiles"][-1] == 100.0
    # The threshold is the 99th percentile of the same scores.
    assert all(p >= 99 for p, anomalous in zip(body["percentiles"], body["is_anomaly"], strict=True) if anomalous)
