"""The browser page (GET /ui) and the API documentation pages (/docs, /redoc), every asset served from
service/web/ so they work without internet: Swagger UI and ReDoc are vendored there (service/web/vendor/,
with their licences). The page itself is plain HTML, CSS and JavaScript over the public API."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

WEB = Path(__file__).resolve().parent.parent / "web"
ASSETS = "/ui/assets"


async def root() -> Response:
    return RedirectResponse("/ui")


async def page() -> Response:
    return FileResponse(WEB / "index.html", media_type="text/html")


async def swagger(request: Request) -> Response:
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title}: API",
        swagger_js_url=f"{ASSETS}/vendor/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS}/vendor/swagger-ui/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS}/vendor/swagger-ui/favicon-32x32.png",
        # Swagger UI otherwise sends the document to validator.swagger.io for its badge.
        swagger_ui_parameters={"validatorUrl": None, "tryItOutEnabled": True},
    )


async def redoc(request: Request) -> Response:
    return get_redoc_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title}: API",
        redoc_js_url=f"{ASSETS}/vendor/redoc/redoc.standalone.js",
        redoc_favicon_url=f"{ASSETS}/vendor/swagger-ui/favicon-32x32.png",
        with_google_fonts=False,
    )


def register(router: APIRouter) -> None:
    for path, endpoint in (("/", root), ("/ui", page), ("/docs", swagger), ("/redoc", redoc)):
        router.add_api_route(path, endpoint, methods=["GET"], include_in_schema=False)
    router.mount(ASSETS, StaticFiles(directory=WEB), name="ui-assets")
