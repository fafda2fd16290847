"""The model repository extension of the Open Inference Protocol, as Triton and MLServer serve it:
POST /v2/repository/index, /v2/repository/models/{name}/load and .../unload.

Off unless admin keys are set (AE_ADMIN_KEYS); every call then needs `Authorization: Bearer KEY`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from service import codecs, schemas
from service.errors import ServiceError
from service.middleware import bearer_key, key_matches
from service.registry import Entry
from service.routes import route_class
from service.routes.catalog import ModelName, RegistryDep, json_response

# Triton's names for the states of a model version.
_STATES = {"ready": "READY", "loading": "LOADING", "unavailable": "UNAVAILABLE", "unloaded": "UNAVAILABLE"}


async def require_admin(request: Request) -> None:
    keys: tuple[str, ...] = request.app.state.settings.admin_keys
    if not keys:
        raise ServiceError(404, "not_found", "the repository API is off: set AE_ADMIN_KEYS to turn it on")
    given = bearer_key(request.headers.get("authorization", "").encode("latin-1"))
    if not given or not key_matches([given], [key.encode() for key in keys]):
        raise ServiceError(
            401, "unauthorized", "send an admin key as `Authorization: Bearer KEY`", {"WWW-Authenticate": "Bearer"}
        )


async def _options(request: Request, allowed: list[str]) -> dict[str, Any]:
    """The optional JSON body of a repository call (Triton's clients send none, `{}` or `parameters`)."""
    raw = await request.body()
    if not raw.strip():
        return {}
    body = codecs.load_json(raw)
    codecs.check_fields(body, [], allowed)
    return body


def index_row(entry: Entry) -> dict[str, str]:
    reason = entry.reason or ("unloaded through the repository API" if entry.status == "unloaded" else "")
    return {"name": entry.name, "version": str(entry.version), "state": _STATES[entry.status], "reason": reason}


async def index(request: Request, registry: RegistryDep) -> Response:
    """Every model version in the repository with its state; `{"ready": true}` lists only those that serve."""
    options = await _options(request, ["ready"])
    ready_only = codecs.option(options, "ready", bool, False)
    rows = [index_row(entry) for entry in registry.entries() if entry.serving or not ready_only]
    return json_response(rows)


async def load(request: Request, model: ModelName, registry: RegistryDep) -> Response:
    """Rescans the model's folder and serves it (again); answers once a version serves, or why none can."""
    await _options(request, ["parameters"])
    return _versions(model, await registry.load(model))


async def unload(request: Request, model: ModelName, registry: RegistryDep) -> Response:
    """Stops serving every version of the model (requests in flight finish); it stays unloaded, whatever the
    folder holds, until it is loaded again."""
    await _options(request, ["parameters"])
    return _versions(model, await registry.unload(model))


def _versions(model: str, entries: list[Entry]) -> Response:
    return json_response({"name": model, "versions": [index_row(entry) for entry in entries]})


_ERRORS = schemas.v2_errors(
    {
        400: "the model cannot be loaded (the message says why)",
        401: "no admin key, or a wrong one",
        404: "the repository API is off (no AE_ADMIN_KEYS), or the model is unknown",
    }
)


def register(router: APIRouter) -> None:
    for path, endpoint in (("/index", index), ("/models/{model}/load", load), ("/models/{model}/unload", unload)):
        router.add_api_route(
            f"/v2/repository{path}",
            endpoint,
            methods=["POST"],
            tags=["model repository"],
            dependencies=[Depends(require_admin)],
            responses=_ERRORS,
            route_class_override=route_class("v2"),
        )
