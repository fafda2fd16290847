"""API keys (AE_API_KEYS): every route asks for one, in its protocol's error shape, except the probes and the
page's static files; the repository API keeps its own admin keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.service.conftest import AppMaker

pytestmark = pytest.mark.anyio

KEYS = ("first-key", "second-key")
OPEN = {"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/ui", "/ui/assets/app.js"}
ROW = {"inputs": [[3.0] * 5]}


@pytest.fixture(scope="module")
def locked(make_app: AppMaker) -> FastAPI:
    return make_app(api_keys=KEYS, admin_keys=("admin-key",))


def every_route(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every documented route, with tab/1 for the model and version."""
    document = app.openapi()
    return [
        (method.upper(), path.replace("{model}", "tab").replace("{version}", "1"))
        for path, methods in document["paths"].items()
        for method in methods
    ] + [("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/redoc"), ("GET", "/metrics")]


async def send(app: FastAPI, method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
        body: dict[str, Any] = {"json": ROW} if method == "POST" and not path.startswith("/v2/repository") else {}
        return await client.request(method, path, headers=headers, **body)


async def test_every_route_asks_for_a_key(locked: FastAPI) -> None:
    open_by_default = OPEN | {"/metrics"}
    routes = [(m, p) for m, p in every_route(locked) if p not in open_by_default and not p.startswith("/v2/repository")]
    assert len(routes) >= 30 and ("POST", "/v2/models/tab/infer") in routes
    for method, path in routes:
        refused = await send(locked, method, path)
        assert refused.status_code == 401, (method, path)
        assert refused.headers["www-authenticate"] == "Bearer"
        message = "send an API key as `Authorization: Bearer KEY` or `X-API-Key: KEY`"
        expected = (
            {"error": message} if path.startswith("/v2") else {"error": {"code": "unauthorized", "message": message}}
        )
        assert refused.json() == expected, path
        for headers in ({"Authorization": "Bearer first-key"}, {"X-API-Key": "second-key"}):
            assert (await send(locked, method, path, headers)).status_code != 401, (method, path, headers)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic first-key"}, {"X-API-Key": "first-ke"},
     {"Authorization": "Bearer admin-key"}],
)  # fmt: skip
async def test_wrong_keys_are_refused(locked: FastAPI, headers: dict[str, str]) -> None:
    assert (await send(locked, "POST", "/models/tab/score", headers)).status_code == 401


async def test_probes_and_the_page_stay_open(locked: FastAPI) -> None:
    for path in sorted(OPEN):
        assert (await send(locked, "GET", path)).status_code == 200, path


async def test_the_repository_api_takes_admin_keys_only(locked: FastAPI) -> None:
    index = "/v2/repository/index"
    assert (await send(locked, "POST", index, {"Authorization": "Bearer first-key"})).status_code == 401
    assert (await send(locked, "POST", index, {"Authorization": "Bearer admin-key"})).status_code == 200


async def test_metrics_need_a_key_only_when_asked(make_app: AppMaker, locked: FastAPI) -> None:
    assert (await send(locked, "GET", "/metrics")).status_code == 200
    strict = make_app(api_keys=KEYS, metrics_need_key=True)
    assert (await send(strict, "GET", "/metrics")).status_code == 401
    assert (await send(strict, "GET", "/metrics", {"X-API-Key": "first-key"})).status_code == 200


async def test_keys_from_a_file(make_app: AppMaker, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# one key per line\n\nfile-key\n")
    app = make_app(api_keys_file=keys)
    assert (await send(app, "POST", "/models/tab/score", {"X-API-Key": "file-key"})).status_code == 200
    assert (await send(app, "POST", "/models/tab/score")).status_code == 401
