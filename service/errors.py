"""One error type carrying its HTTP status, and one handler rendering every failure the same way:
`{"error": {"code": "...", "message": "..."}}`, request validation and unknown routes included."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Literal

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Scope

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """A failure the client should see: an HTTP status, a stable machine-readable code, a message."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(error: ServiceError) -> Response:
    return _json(error.status, {"error": {"code": error.code, "message": error.message}}, error)


# The Open Inference Protocol knows 400 for every bad request; its limits, keys and states keep their status.
_V2_BAD_REQUEST = {406, 415, 422}
V2_PREFIX = "/v2"


def v2_error_response(error: ServiceError) -> Response:
    """The protocol's shape, `{"error": "message"}`, which Triton's and KServe's clients read."""
    return _json(400 if error.status in _V2_BAD_REQUEST else error.status, {"error": error.message}, error)


def _json(status: int, body: dict[str, object], error: ServiceError) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=error.headers)


# Starlette raises these itself (unknown route, wrong method, a malformed multipart form).
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}


def _as_is(exc: Exception) -> ServiceError:
    assert isinstance(exc, ServiceError)
    return exc


def _from_http(exc: Exception) -> ServiceError:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return ServiceError(exc.status_code, code, str(exc.detail), exc.headers)  # 405 keeps its Allow header


def _from_validation(exc: Exception) -> ServiceError:
    assert isinstance(exc, RequestValidationError)
    problems = ["{}: {}".format(".".join(map(str, e["loc"])), e["msg"]) for e in exc.errors()]
    return ServiceError(422, "invalid_request", "; ".join(problems))


def _unexpected(exc: Exception) -> ServiceError:
    logger.error("unhandled exception", exc_info=exc)
    return ServiceError(500, "internal_error", "internal server error")


# Most specific first: the first matching class converts.
_CONVERTERS: dict[type[Exception], Callable[[Exception], ServiceError]] = {
    ServiceError: _as_is,
    RequestValidationError: _from_validation,
    HTTPException: _from_http,
    ClientDisconnect: lambda exc: ServiceError(400, "client_disconnected", "the client went away mid-request"),
    Exception: _unexpected,
}


Protocol = Literal["rest", "v2"]
_RENDERERS: dict[Protocol, Callable[[ServiceError], Response]] = {"rest": error_response, "v2": v2_error_response}


def protocol_of(scope: Scope) -> Protocol:
    """The protocol a request speaks: its route's (service.routes.ServiceRoute.protocol); before routing (the
    middleware's refusals) and where no route matched, the one whose paths `/v2` begins."""
    protocol = getattr(scope.get("route"), "protocol", None)
    if protocol is not None:
        return protocol
    path = scope["path"]
    return "v2" if path == V2_PREFIX or path.startswith(V2_PREFIX + "/") else "rest"


def render(scope: Scope, error: ServiceError) -> Response:
    """The error in the shape of the protocol the request speaks."""
    return _RENDERERS[protocol_of(scope)](error)


async def handle_error(request: Request, exc: Exception) -> Response:
    convert = next(convert for kind, convert in _CONVERTERS.items() if isinstance(exc, kind))
    return render(request.scope, convert(exc))


def install_error_handlers(app: FastAPI) -> None:
    for kind in _CONVERTERS:
        app.add_exception_handler(kind, handle_error)
