"""top_features on /score: the parts of each row that contribute most to its score, checked against the
squared errors the same answer returns."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.anyio


async def test_table_rows_name_their_largest_errors(client: httpx.AsyncClient, tabular_rows: np.ndarray) -> None:
    answer = await client.post(
        "/models/tab/score", json={"inputs": tabular_rows.tolist(), "return_sq_err": True, "top_features": 2}
    )
    body = answer.json()
    for errors, top in zip(np.asarray(body["sq_err"]), body["top_features"], strict=True):
        expected = np.argsort(-errors, kind="stable")[:2]
        assert [entry["index"] for entry in top] == expected.tolist()
        assert [entry["feature"] for entry in top] == [str(i) for i in expected]  # no names: the column index
        np.testing.assert_allclose([entry["sq_err"] for entry in top], errors[expected], rtol=1e-6)
        np.testing.assert_allclose([entry["share"] for entry in top], errors[expected] / errors.sum(), rtol=1e-5)


async def test_image_rows_name_their_worst_regions(client: httpx.AsyncClient, image_rows: np.ndarray) -> None:
    answer = await client.post(
        "/models/conv/score", json={"inputs": image_rows.tolist(), "return_sq_err": True, "top_features": 4}
    )
    body = answer.json()
    for errors, top in zip(np.asarray(body["sq_err"]), body["top_features"], strict=True):
        blocks = {(y, x): errors[y : y + 4, x : x + 4].sum() for y in (0, 4) for x in (0, 4)}  # 8 x 8 in 4 x 4s
        got = {tuple(entry["region"][:2]): entry["sq_err"] for entry in top}
        assert set(got) == set(blocks) and all(
            entry["region"][2:] == [entry["region"][0] + 4, entry["region"][1] + 4] for entry in top
        )
        np.testing.assert_allclose([got[key] for key in blocks], list(blocks.values()), rtol=1e-5)
        assert [entry["sq_err"] for entry in top] == sorted((entry["sq_err"] for entry in top), reverse=True)


@pytest.mark.parametrize("value", [-1, "2", True, 1.5])
async def test_a_bad_count_is_a_422(client: httpx.AsyncClient, value: object) -> None:
    answer = await client.post("/models/tab/score", json={"inputs": [[3.0] * 5], "top_features": value})
    assert (answer.status_code, answer.json()["error"]["code"]) == (422, "invalid_request")


async def test_binary_answers_leave_the_explanation_to_json(client: httpx.AsyncClient) -> None:
    answer = await client.post(
        "/models/tab/score", json={"inputs": [[3.0] * 5], "top_features": 1}, headers={"accept": "application/x-npz"}
    )
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/x-npz"


async def test_a_planted_single_feature_anomaly_is_named_first(client: httpx.AsyncClient, models_dir: Path) -> None:
    preprocessing = json.loads((models_dir / "tab" / "1" / "manifest.json").read_text())["preprocessing"]
    offset, scale = np.asarray(preprocessing["offset"]), np.asarray(preprocessing["scale"])
    rows = np.tile(offset + 0.5 * scale, (3, 1))  # mid-range rows
    for row, feature in enumerate((0, 2, 4)):
        rows[row, feature] += 50 * scale[feature]  # one feature far out of range
    body = (await client.post("/models/tab/score", json={"inputs": rows.tolist(), "top_features": 1})).json()
    assert [top[0]["index"] for top in body["top_features"]] == [0, 2, 4]
    assert all(top[0]["share"] > 0.9 for top in body["top_features"])


async def test_more_parts_than_anyone_reads_are_refused(client: httpx.AsyncClient, tabular_rows: np.ndarray) -> None:
    answer = await client.post("/models/tab/score", json={"inputs": tabular_rows.tolist(), "top_features": 101})
    assert answer.status_code == 422
    assert answer.json()["error"]["message"] == "top_features must be an integer from 0 to 100, got 101"
