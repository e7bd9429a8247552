"""Key management over HTTP: a key is shown once, listed without its secret, and dies when revoked."""

from __future__ import annotations

import pytest


def test_create_list_use_and_revoke(client, admin_headers):
    created = client.post("/v1/keys", json={"name": "ci", "scopes": ["train", "optimize"]}, headers=admin_headers)
    assert created.status_code == 201, created.text
    body = created.json()
    key = body["key"]
    assert key.startswith("l2o_") and body["prefix"] == key[:12] and body["scopes"] == ["optimize", "train"]
    assert body["revoked_at"] is None

    listed = client.get("/v1/keys", headers=admin_headers)
    assert listed.status_code == 200 and key not in listed.text
    assert [k["name"] for k in listed.json()] == ["admin", "ci"]
    assert all("key" not in k for k in listed.json())

    new = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/optimizers", headers=new).status_code == 200
    assert client.get("/v1/keys", headers=new).status_code == 403

    assert client.delete(f"/v1/keys/{body['id']}", headers=admin_headers).status_code == 204
    assert client.delete(f"/v1/keys/{body['id']}", headers=admin_headers).status_code == 204  # idempotent
    refused = client.get("/v1/optimizers", headers=new)
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
    revoked = next(k for k in client.get("/v1/keys", headers=admin_headers).json() if k["id"] == body["id"])
    assert revoked["revoked_at"] is not None


@pytest.mark.parametrize("body, fragment", [
    ({"name": "x", "scopes": ["root"]}, "body.scopes.0"),
    ({"name": "x", "scopes": []}, "body.scopes"),
    ({"name": "", "scopes": ["admin"]}, "body.name"),
    ({"scopes": ["admin"]}, "body.name"),
])
def test_bad_key_requests_name_the_field_and_create_nothing(client, admin_headers, body, fragment):
    response = client.post("/v1/keys", json=body, headers=admin_headers)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error" and fragment in response.json()["error"]["message"]
    assert len(client.get("/v1/keys", headers=admin_headers).json()) == 1


def test_revoking_an_unknown_key_is_404(client, admin_headers):
    response = client.delete("/v1/keys/424242", headers=admin_headers)
    assert response.status_code == 404 and "424242" in response.json()["error"]["message"]
