"""One module per protocol, each a thin translation between HTTP and service.dataplane / service.registry.

Every route of the service is an `APIRoute` registered once in the app's router, so /docs documents exactly
what serves and a FastAPI dependency added to the app or a router runs for every route."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from functools import cache
from typing import Any, ClassVar

from fastapi import Request, Response, routing
from fastapi.routing import APIRoute

from service.batching import deadline_at
from service.errors import Protocol, ServiceError

# include_router builds an included route's handler under this context, whose dependant adds the including
# router's dependencies to the route's own. FastAPI offers no public way to see them, so it is pinned exactly
# (pyproject.toml) and tests/service/test_route_class.py fails the day this changes; read at import, so a
# FastAPI without it stops the start instead of skipping a router's dependencies (its authentication).
_INCLUDED_ROUTE = routing._effective_route_context_var


class ServiceRoute(APIRoute):
    """An APIRoute that says which protocol it speaks (its errors take that protocol's shape) and which
    inference operation it serves, if any (the request metrics' operation label), and that skips FastAPI's
    dependency solving when there is nothing to solve.

    Inference endpoints take the bare Request and parse it themselves (service.payloads); solving their
    empty dependency tree costs about 40% of a one-row request (one worker: 1,140 against 670 one-row /score
    requests a second, wrk -c8). Once a dependency is attached (to the route, a router or the app), the
    dependant has it and the route goes through FastAPI's own handler."""

    protocol: ClassVar[Protocol] = "rest"
    operation: ClassVar[str | None] = None

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        included = _INCLUDED_ROUTE.get()
        needs = included.dependant if included is not None and included.original_route is self else self.dependant
        if needs.dependencies or needs.path_params or needs.query_params or needs.header_params:
            return super().get_route_handler()
        if needs.cookie_params or needs.body_params or needs.request_param_name != "request":
            return super().get_route_handler()
        return self.endpoint


@cache
def route_class(protocol: Protocol, operation: str | None = None) -> type[ServiceRoute]:
    """The ServiceRoute class of one protocol and operation, for `add_api_route(route_class_override=...)`."""
    attributes = {"protocol": protocol, "operation": operation}
    return type(f"{protocol.title()}{(operation or '').title()}Route", (ServiceRoute,), attributes)


@asynccontextmanager
async def deadline(seconds: float, why: str | None = None) -> AsyncIterator[None]:
    """504 `timeout` when the block (reading the body, waiting for a batch, computing) takes too long; the
    message is `why` when given (a gRPC call's own deadline)."""
    try:
        async with asyncio.timeout(seconds) as timeout:
            with deadline_at(timeout.when()):  # the batchers drop its rows once it has passed
                yield
    except TimeoutError:
        raise ServiceError(504, "timeout", why or f"the request took longer than {seconds:g} s") from None
