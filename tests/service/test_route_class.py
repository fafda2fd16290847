"""ServiceRoute's fast path reads FastAPI's private `_effective_route_context_var` (FastAPI is pinned exactly
for it): a route that needs nothing from FastAPI's dependency solving skips it, and a route included with a
router's dependencies still runs them. The day that internal changes, the second test fails."""

from __future__ import annotations

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request, Response

from service.errors import ServiceError, install_error_handlers
from service.routes import ServiceRoute

pytestmark = pytest.mark.anyio


async def endpoint(request: Request) -> Response:
    return Response(b"served")


async def deny() -> None:
    raise ServiceError(403, "forbidden", "no entry")


def inner_router() -> APIRouter:
    router = APIRouter()
    router.add_api_route("/served", endpoint, methods=["POST"], route_class_override=ServiceRoute)
    return router


def test_a_route_that_needs_nothing_skips_dependency_solving() -> None:
    (route,) = inner_router().routes
    assert isinstance(route, ServiceRoute)
    assert route.get_route_handler() is endpoint


async def test_a_route_included_with_dependencies_runs_them() -> None:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(inner_router(), prefix="/guarded", dependencies=[Depends(deny)])
    app.include_router(inner_router(), prefix="/open")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
        guarded = await client.post("/guarded/served")
        assert (guarded.status_code, guarded.json()["error"]["code"]) == (403, "forbidden")
        assert (await client.post("/open/served")).text == "served"
