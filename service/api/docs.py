"""/docs (Swagger UI) and /redoc, served with the scripts and styles the fastapi-offline package ships,
so the API's documentation loads where no CDN can be reached (FastAPI's own pages fetch them from one,
and Google's fonts besides). The pages name no other host."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs/assets"
ASSETS = files("fastapi_offline") / "static"   # swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js
TITLE = "l2o API"

router = APIRouter(include_in_schema=False)
router.mount(ASSETS_URL, StaticFiles(directory=str(ASSETS)), name="docs-assets")


@router.get("/docs")
def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json", title=TITLE, swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_URL}/swagger-ui.css", swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
        oauth2_redirect_url="/docs/oauth2-redirect",
        # Swagger UI would otherwise send the document to validator.swagger.io for its badge.
        swagger_ui_parameters={"validatorUrl": None})


@router.get("/docs/oauth2-redirect")
def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
def redoc() -> HTMLResponse:
    return get_redoc_html(openapi_url="/openapi.json", title=TITLE, redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
                          redoc_favicon_url=f"{ASSETS_URL}/favicon.png", with_google_fonts=False)
