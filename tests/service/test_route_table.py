"""One route table: every inference route is a FastAPI route, so what is added to the app runs for all."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.app import create_app
from service.errors import ServiceError
from service.routes import ServiceRoute
from service.routes.rest import OPERATIONS, STYLES
from service.settings import Settings
from tests.service.registries import refreshed

pytestmark = pytest.mark.anyio

INFERENCE = [
    prefix.replace("{model}", "tab").replace("{version}", "1") + f"/{operation}"
    for prefix in STYLES
    for operation in OPERATIONS
]


def served(app: FastAPI) -> httpx.AsyncClient:
    refreshed(app.state.registry)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test")


async def test_a_dependency_of_the_app_runs_for_every_route(models_dir: Path) -> None:
    async def deny(request: Request) -> None:
        raise ServiceError(403, "forbidden", f"no entry to {request.url.path}")

    app = create_app(Settings(models_dir=models_dir, intra_op_threads=1), dependencies=[Depends(deny)])
    async with served(app) as client:
        for path in INFERENCE:
            answer = await client.post(path, json={"inputs": [0.0] * 5})
            assert (answer.status_code, answer.json()["error"]["code"]) == (403, "forbidden"), path
        assert (await client.get("/models")).status_code == 403


async def test_a_middleware_added_to_the_app_sees_every_inference_request(models_dir: Path) -> None:
    seen: list[tuple[str, bool]] = []

    class Record:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await self.app(scope, receive, send)
            if scope["type"] == "http":  # the router has put the route that answered into the scope
                seen.append((scope["path"], isinstance(scope.get("route"), ServiceRoute)))

    app = create_app(Settings(models_dir=models_dir, intra_op_threads=1))
    app.add_middleware(Record)
    async with served(app) as client:
        for path in INFERENCE:
            await client.post(path, json={"inputs": [0.0] * 5})
    assert seen == [(path, True) for path in INFERENCE]
