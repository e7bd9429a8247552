"""/docs and /redoc load everything from this server: the pages name no other host, and the scripts and
styles they name are served here, without a key."""

from __future__ import annotations

import re

import pytest

URL_ATTR = re.compile(r"""(?:src|href|url)\s*[=:(]\s*['"]?([^'")\s>]+)""", re.I)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("page", "assets"), [
    ("/docs", {"swagger-ui-bundle.js": "javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}),
    ("/redoc", {"redoc.standalone.js": "javascript", "favicon.png": "image/png"}),
])
def test_docs_pages_name_no_other_host_and_their_assets_are_served(client, page, assets):
    response = client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert not re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.I), "the page names another host"
    linked = set(URL_ATTR.findall(html))
    assert {f"/docs/assets/{name}" for name in assets} <= linked, linked
    assert "/openapi.json" in html
    for name, kind in assets.items():
        asset = client.get(f"/docs/assets/{name}")
        assert asset.status_code == 200 and kind in asset.headers["content-type"], name
        assert len(asset.content) > 1000, name
    assert client.get("/docs/assets/../../app.py").status_code == 404
    assert client.get("/openapi.json").status_code == 200


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_oauth2_redirect_page_is_served(client):
    response = client.get("/docs/oauth2-redirect")
    assert response.status_code == 200 and "oauth2" in response.text.lower()
