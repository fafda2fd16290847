"""Rows by feature name: JSON objects and CSV bodies with a header, for tabular models whose manifest names
their features; the same numbers as rows sent as lists, and each mistake a 422 that names it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.settings import Settings
from tests.service.registries import refreshed

pytestmark = pytest.mark.anyio

NAMES = ["age", "bp", "chol", "hr", "tsh"]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory, copy_package: Any) -> AsyncIterator[httpx.AsyncClient]:
    root = tmp_path_factory.mktemp("named")
    copy_package("tab", root, "named", edit=lambda m: m["input"].update(feature_names=NAMES))
    copy_package("tab", root, "plain")
    app = refreshed_app(root)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
        yield client


def refreshed_app(root: Path) -> Any:
    app = create_app(Settings(models_dir=root, intra_op_threads=1))
    refreshed(app.state.registry)
    return app


async def scores(client: httpx.AsyncClient, path: str, **request: Any) -> list[float]:
    answer = await client.post(path, **request)
    assert answer.status_code == 200, answer.text
    return answer.json()["scores"]


async def test_objects_and_csv_score_like_lists(client: httpx.AsyncClient, tabular_rows: np.ndarray) -> None:
    rows = tabular_rows.tolist()
    expected = await scores(client, "/models/named/score", json={"inputs": rows})
    objects = [dict(reversed(list(zip(NAMES, row, strict=True)))) for row in rows]  # keys in another order
    header = list(reversed(NAMES))
    csv = "\n".join([",".join(header)] + [",".join(str(v) for v in reversed(row)) for row in rows])
    headless = "\n".join(",".join(map(str, row)) for row in rows)

    assert await scores(client, "/models/named/score", json={"inputs": objects}) == expected
    assert await scores(client, "/models/named/score", json={"inputs": objects[0]}) == expected[:1]
    for body in (csv, headless):
        got = await scores(client, "/models/named/score", content=body, headers={"content-type": "text/csv"})
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    plain = await scores(client, "/models/plain/score", content=headless, headers={"content-type": "text/csv"})
    np.testing.assert_allclose(plain, expected, rtol=1e-6)
    with_errors = await client.post(
        "/models/named/score?return_sq_err=true", content=csv, headers={"content-type": "text/csv; charset=utf-8"}
    )
    assert np.asarray(with_errors.json()["sq_err"]).shape == (len(rows), len(NAMES))


ROW = dict(zip(NAMES, [1.0, 2.0, 3.0, 4.0, 5.0], strict=True))
CSV = {"content-type": "text/csv"}

# id, path, request, status, code, message
# fmt: off
CASES: list[tuple[str, str, dict[str, Any], int, str, str]] = [
    ("a missing name", "/models/named/score", {"json": {"inputs": [{k: v for k, v in ROW.items() if k != "tsh"}]}},
     422, "invalid_request", f"inputs: row 0 lacks ['tsh']; the features are {NAMES}"),
    ("an unknown name", "/models/named/score", {"json": {"inputs": [ROW, ROW | {"sex": 1}]}}, 422, "invalid_request",
     f"inputs: row 1 has unknown ['sex']; the features are {NAMES}"),
    ("objects then a list", "/models/named/score", {"json": {"inputs": [ROW, list(ROW.values())]}}, 422,
     "invalid_shape", "inputs: row 1 is not an object like the rows before it"),
    ("a value that is text", "/models/named/score", {"json": {"inputs": [ROW | {"bp": "high"}]}}, 422,
     "invalid_dtype", "inputs must hold numbers only, found strings"),
    ("objects for a model without names", "/models/plain/score", {"json": {"inputs": [ROW]}}, 422, "invalid_request",
     "inputs: this model has no feature names; send rows as lists"),
    ("a CSV header with an unknown name", "/models/named/score",
     {"content": "age,bp,chol,hr,sex\n1,2,3,4,5", "headers": CSV}, 422, "invalid_request",
     "the CSV header must name each feature once: missing ['tsh'], unknown ['sex']"),
    ("a CSV header for a model without names", "/models/plain/score",
     {"content": ",".join(NAMES) + "\n1,2,3,4,5", "headers": CSV}, 422, "invalid_request",
     "this model has no feature names: send CSV rows without a header"),
    ("a short CSV line", "/models/named/score", {"content": "1,2,3,4,5\n1,2,3", "headers": CSV}, 422, "invalid_shape",
     "CSV line 2 has 3 values; the model takes 5"),
    ("text in a CSV line", "/models/named/score", {"content": "1,2,3,4,x", "headers": CSV}, 422, "invalid_dtype",
     "CSV line 1 holds a value that is not a number"),
    ("an empty CSV body", "/models/named/score", {"content": "\n\n", "headers": CSV}, 422, "empty_batch",
     "the CSV body has no rows: send at least one"),
    ("a CSV number with an underscore", "/models/named/score", {"content": b"1_0,2,3,4,5\n", "headers": CSV}, 422,
     "invalid_dtype", "CSV line 1 holds a value that is not a number"),
    ("a CSV number in Arabic-Indic digits", "/models/named/score",
     {"content": "\u0661,2,3,4,5\n".encode(), "headers": CSV}, 422, "invalid_dtype",
     "CSV line 1 holds a value that is not a number"),
    ("a CSV body that is not UTF-8", "/models/named/score", {"content": b"\xff\xfe1,2", "headers": CSV}, 400,
     "malformed_csv", "the CSV body is not UTF-8 text"),
    ("a CSV line longer than any row", "/models/named/score",
     {"content": '1,"' + "2" * 200_000 + '"', "headers": CSV}, 422, "invalid_shape",
     f"a CSV line is longer than {256 * len(NAMES) + 4096} characters: not a row"),
]
# fmt: on


@pytest.mark.parametrize(
    ("path", "request_", "status", "code", "message"), [pytest.param(*c[1:], id=c[0]) for c in CASES]
)
async def test_naming_mistakes_are_422s_that_say_which(
    client: httpx.AsyncClient, path: str, request_: dict[str, Any], status: int, code: str, message: str
) -> None:
    answer = await client.post(path, **request_)
    assert (answer.status_code, answer.json()) == (status, {"error": {"code": code, "message": message}})


async def test_top_features_use_the_feature_names(client: httpx.AsyncClient, tabular_rows: np.ndarray) -> None:
    body = (await client.post("/models/named/score", json={"inputs": tabular_rows.tolist(), "top_features": 5})).json()
    assert all(sorted(entry["feature"] for entry in top) == sorted(NAMES) for top in body["top_features"])
    assert all(NAMES[entry["index"]] == entry["feature"] for top in body["top_features"] for entry in top)
