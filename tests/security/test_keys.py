"""API keys under attack: odd Authorization headers, another key's sessions and jobs, keys in the logs, and
the comparison that checks a key. (Every route's 401 for no, wrong and revoked keys and 403 for a missing
scope is tested route by route in tests/api/test_auth.py.)"""

from __future__ import annotations

import hmac
import os
import re

import httpx
import pytest

from service.lopt import Checkpoint
from service.registry import keys
from tests.conftest import checkpoint_bytes
from tests.jobs.conftest import tiny_spec
from tests.live_server import ServeProcess, free_port
from tests.security.conftest import SHAPES, ST_TYPE, bearer, grads_body

ODD_AUTHORIZATION = [
    "Bearer", "Bearer ", "bearer l2o_x", "Bearer  l2o_x", "Token l2o_x", "Basic dXNlcjpwYXNz",
    "Bearer " + "A" * 8000, "Bearer l2o_\u00e9\u00e8", "Bearer \x00\x01", "Bearer l2o_x, Bearer l2o_y",
]


@pytest.mark.parametrize("value", ODD_AUTHORIZATION)
def test_odd_authorization_headers_are_401_never_an_error(client, value):
    response = client.get("/v1/optimizers", headers={"Authorization": value.encode("latin-1")})
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthorized"


def test_a_key_is_checked_by_its_hash_with_a_constant_time_compare(app, monkeypatch):
    """The lookup is by the key's sha256 (an index, not a scan of secrets), then hmac.compare_digest."""
    calls, real = [], hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys.hmac, "compare_digest", spy)
    with app.state.db.session() as s:
        row, key = keys.create_key(s, "k", ["optimize"])
        s.commit()
        assert keys.authenticate(s, key).id == row.id
        assert calls == [(row.key_hash, keys.hash_key(key))]
        assert row.key_hash != key and key not in str(vars(row))  # only the hash is stored


def test_another_keys_sessions_and_jobs_do_not_exist_for_it(client, make_key, optimizer, optimize_headers, session_id):
    train = bearer(make_key("train", name="owner"))
    job = client.post("/v1/jobs", json=tiny_spec("mine"), headers=train).json()
    stranger = bearer(make_key("optimize", "train", name="stranger"))
    state_before = client.get(f"/v1/sessions/{session_id}/state", headers=optimize_headers).content

    probes = [
        ("GET", f"/v1/sessions/{session_id}", {}),
        ("GET", f"/v1/sessions/{session_id}/state", {}),
        ("POST", f"/v1/sessions/{session_id}/step", {"content": grads_body(1), "headers": ST_TYPE}),
        ("POST", f"/v1/sessions/{session_id}/step", {"content": grads_body(0), "headers": ST_TYPE}),  # a "retry"
        ("DELETE", f"/v1/sessions/{session_id}", {}),
        ("GET", f"/v1/jobs/{job['id']}", {}),
        ("GET", f"/v1/jobs/{job['id']}/events", {}),
        ("POST", f"/v1/jobs/{job['id']}/cancel", {}),
    ]
    for method, path, extra in probes:
        response = client.request(method, path, content=extra.get("content"),
                                  headers={**stranger, **extra.get("headers", {})})
        assert response.status_code == 404, (method, path, response.text)
        # Word for word what an id that never existed gets: nothing tells the stranger the id is taken.
        never = client.request(method, path.replace(session_id, "s_" + "x" * 32).replace(job["id"], "0" * 32),
                               content=extra.get("content"), headers={**stranger, **extra.get("headers", {})})
        assert response.json()["error"]["code"] == never.json()["error"]["code"], (method, path)
    assert client.get("/v1/sessions", headers=stranger).json() == []
    assert client.get("/v1/jobs", headers=stranger).json() == []
    # And none of it touched them.
    assert client.get(f"/v1/sessions/{session_id}/state", headers=optimize_headers).content == state_before
    assert client.get(f"/v1/jobs/{job['id']}", headers=train).json()["state"] == "queued"
    # A resumed copy of the state is the stranger's own session, not a door into the owner's.
    resumed = client.post("/v1/sessions/resume", content=state_before, headers={**stranger, **ST_TYPE})
    assert resumed.status_code == 201 and resumed.json()["id"] != session_id
    assert client.get(f"/v1/sessions/{session_id}", headers=optimize_headers).json()["step"] == 1


@pytest.mark.slow  # a real server process: a few seconds
def test_keys_never_reach_the_logs(tmp_path):
    """Everything `l2o serve` prints at debug level, uvicorn's access log included, over a run that
    creates, uses, mistypes and revokes keys: no key appears in it, nor the Authorization header."""

    Checkpoint.from_bytes(checkpoint_bytes(seed=1)).save(tmp_path / "pretrained" / "opt")
    env = {**os.environ, "L2O_DATA_DIR": str(tmp_path / "data"), "L2O_PRETRAINED_DIR": str(tmp_path / "pretrained"),
           "L2O_LOG_LEVEL": "debug", "L2O_SESSION_STORE": "memory"}
    env.pop("L2O_DATABASE_URL", None)
    log = tmp_path / "serve.log"
    with ServeProcess(env, free_port(), log) as server:
        admin_key = (tmp_path / "data" / "admin.key").read_text().strip()
        with httpx.Client(base_url=server.url, timeout=30) as http:
            admin = bearer(admin_key)
            created = http.post("/v1/keys", json={"name": "user", "scopes": ["optimize"]}, headers=admin).json()
            user_key = created["key"]
            sid = http.post("/v1/sessions", json={"optimizer": "opt", "shapes": SHAPES}, headers=bearer(user_key))
            sid = sid.json()["id"]
            assert http.post(f"/v1/sessions/{sid}/step", content=grads_body(0),
                             headers={**bearer(user_key), **ST_TYPE}).status_code == 200
            wrong = user_key[:-4] + "abcd"
            assert http.get("/v1/optimizers", headers=bearer(wrong)).status_code == 401
            assert http.get("/v1/optimizers", headers={"Authorization": f"Basic {user_key}"}).status_code == 401
            assert http.delete(f"/v1/keys/{created['id']}", headers=admin).status_code == 204
            assert http.get("/v1/optimizers", headers=bearer(user_key)).status_code == 401
            assert http.get("/v1/keys", headers=admin).status_code == 200
        server.terminate()
    text = log.read_text(errors="replace")
    assert '"POST /v1/keys HTTP/1.1" 201' in text and "/step HTTP/1.1\" 200" in text, "no access log captured"
    for key in (admin_key, user_key, wrong):
        secret = key[len(keys.KEY_PREFIX):]
        assert secret not in text and secret[:16] not in text and secret[-16:] not in text
        assert keys.hash_key(key) not in text
    # Nor the header itself, in any form a log line could print it (a header line, a dict, a list of pairs).
    assert "Bearer" not in text and not re.search(r"authorization['\"]?\s*[:=,]", text, re.IGNORECASE)
