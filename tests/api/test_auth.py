"""Every route but health, metrics and docs needs a live key (401 otherwise) holding its scope (403)."""

from __future__ import annotations

import re

import pytest

from service.api.health import PUBLIC_PATHS
from service.app import create_app
from service.config import Settings
from tests.conftest import ALL_SCOPES, checkpoint_bytes

# Names and ids that exist nowhere, so a request that gets past the auth check changes nothing.
PATH_VALUES = {"name": "lstm", "version": "1", "alias": "prod", "key_id": "999999"}


def protected_routes() -> list[tuple[str, str]]:
    """Every operation the app serves (read from its OpenAPI document), less the public ones."""
    paths = create_app(Settings(database_url="sqlite://")).openapi()["paths"]
    return [(method.upper(), path) for path, ops in sorted(paths.items()) if path not in PUBLIC_PATHS
            for method in sorted(ops) if method not in ("head", "options")]


def url_of(path: str) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: PATH_VALUES.get(m.group(1), "x"), path)


def headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def scope_refusals(client, keys_without: dict[str, str], method: str, path: str) -> dict[str, dict]:
    """scope -> the 403 error body, for each scope whose absence gets the route refused."""
    refused = {}
    for scope, key in keys_without.items():
        response = client.request(method, url_of(path), headers=headers(key))
        assert response.status_code != 401, (method, path, response.text)
        if response.status_code == 403:
            refused[scope] = response.json()["error"]
    return refused


@pytest.fixture
def keys_without(make_key) -> dict[str, str]:
    """scope -> a key holding every scope but that one (and not `admin`, which implies every scope)."""
    return {scope: make_key(*(s for s in ALL_SCOPES if s not in (scope, "admin"))) for scope in ALL_SCOPES}


ROUTES = protected_routes()


def test_the_registry_and_key_routes_are_all_protected():
    assert set(ROUTES) >= {("GET", "/v1/optimizers"), ("GET", "/v1/optimizers/{name}"), ("DELETE", "/v1/keys/{key_id}"),
                           ("GET", "/v1/optimizers/{name}/versions/{version}/checkpoint")}


def test_every_route_gets_401_for_no_key_a_wrong_key_and_a_revoked_key(client, make_key):
    revoked = make_key(*ALL_SCOPES)
    admin = headers(make_key("admin"))
    key_id = next(k["id"] for k in client.get("/v1/keys", headers=admin).json() if k["prefix"] == revoked[:12])
    assert client.delete(f"/v1/keys/{key_id}", headers=admin).status_code == 204
    for method, path in ROUTES:
        for sent, fragment in [({}, "missing API key"),
                               (headers("l2o_wrong"), "invalid API key"),
                               ({"Authorization": "Basic dXNlcjpwYXNz"}, "malformed"),
                               (headers(revoked), "revoked")]:
            response = client.request(method, url_of(path), headers=sent)
            where = (method, path, sent)
            assert response.status_code == 401, (where, response.text)
            assert response.json()["error"]["code"] == "unauthorized", where
            assert fragment in response.json()["error"]["message"], where
            assert response.headers["www-authenticate"] == "Bearer", where


# The scope each route needs: one table for every route the app serves (None: any live key). A route
# missing from it fails test_every_route_has_its_scope_in_the_table.
SCOPES = {
    ("GET", "/v1/optimizers"): None,
    ("GET", "/v1/optimizers/resolve"): None,
    ("GET", "/v1/optimizers/{name}"): None,
    ("GET", "/v1/optimizers/{name}/versions/{version}"): None,
    ("GET", "/v1/optimizers/{name}/versions/{version}/checkpoint"): None,
    ("POST", "/v1/optimizers/{name}/versions"): "admin",
    ("DELETE", "/v1/optimizers/{name}/versions/{version}"): "admin",
    ("DELETE", "/v1/optimizers/{name}"): "admin",
    # Editing and evaluating also need the name to be the key's own (its job created it) unless it is admin.
    ("PATCH", "/v1/optimizers/{name}"): "train",
    ("PATCH", "/v1/optimizers/{name}/versions/{version}"): "train",
    ("POST", "/v1/optimizers/{name}/versions/{version}/evaluate"): "train",
    ("PUT", "/v1/optimizers/{name}/aliases/{alias}"): "admin",
    ("DELETE", "/v1/optimizers/{name}/aliases/{alias}"): "admin",
    ("POST", "/v1/keys"): "admin",
    ("GET", "/v1/keys"): "admin",
    ("DELETE", "/v1/keys/{key_id}"): "admin",
    ("POST", "/v1/sessions"): "optimize",
    ("POST", "/v1/sessions/resume"): "optimize",
    ("GET", "/v1/sessions"): "optimize",
    ("GET", "/v1/sessions/{session_id}"): "optimize",
    ("DELETE", "/v1/sessions/{session_id}"): "optimize",
    ("POST", "/v1/sessions/{session_id}/step"): "optimize",
    ("GET", "/v1/sessions/{session_id}/state"): "optimize",
    ("POST", "/v1/jobs"): "train",
    ("GET", "/v1/jobs"): "train",
    ("GET", "/v1/jobs/{job_id}"): "train",
    ("GET", "/v1/jobs/{job_id}/curve"): "train",
    ("GET", "/v1/jobs/{job_id}/events"): "train",
    ("POST", "/v1/jobs/{job_id}/cancel"): "train",
}


def test_every_route_has_its_scope_in_the_table():
    assert sorted(set(ROUTES) - set(SCOPES)) == [], "routes with no expected scope in SCOPES"
    assert sorted(set(SCOPES) - set(ROUTES)) == [], "SCOPES names routes the app does not serve"


@pytest.mark.parametrize("method, path", sorted(SCOPES))
def test_every_route_needs_exactly_its_scope(client, keys_without, make_key, method, path):
    """Each key lacking a scope is refused (403 naming the scope) exactly where that scope is needed; a key
    holding only the needed scope is not refused."""
    scope = SCOPES[(method, path)]
    refused = scope_refusals(client, keys_without, method, path)
    # Every key in keys_without lacks `admin`, so an admin route refuses them all; another route refuses only
    # the key without its scope.
    expected = set(ALL_SCOPES) if scope == "admin" else {scope} if scope else set()
    assert set(refused) == expected, (method, path, refused)
    for lacking, error in refused.items():
        granted = [s for s in ALL_SCOPES if s not in (lacking, "admin")]
        assert error == {"code": "forbidden", "message": f"this API key lacks the {scope!r} scope",
                         "detail": {"required": scope, "granted": granted}}, (method, path)
    if scope is not None:
        assert scope_refusals(client, {scope: make_key(scope)}, method, path) == {}, (method, path)


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"])
def test_health_metrics_and_docs_need_no_key(client, path):
    assert client.get(path).status_code == 200


def test_an_admin_key_implies_every_scope(client, make_key):
    admin_only = make_key("admin")
    for method, path in ROUTES:
        assert scope_refusals(client, {"admin": admin_only}, method, path) == {}, (method, path)
    # And does the work: registers an optimizer, steps a session on it, submits a meta-training job.
    sent = headers(admin_only)
    assert client.post("/v1/optimizers/mine/versions", content=checkpoint_bytes(),
                       headers={**sent, "Content-Type": "application/octet-stream"}).status_code == 201
    session = client.post("/v1/sessions", json={"optimizer": "mine", "shapes": {"w": [3]}}, headers=sent)
    assert session.status_code == 201, session.text
    step = client.post(f"/v1/sessions/{session.json()['id']}/step", json={"step": 0, "grads": {"w": [1.0, 2.0, 3.0]}},
                       headers=sent)
    assert step.status_code == 200, step.text
    job = client.post("/v1/jobs", json={"name": "by-admin", "family": {"name": "quadratic", "params": {"dim": 3}}},
                      headers=sent)
    assert job.status_code == 201, job.text
