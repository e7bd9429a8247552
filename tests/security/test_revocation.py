"""Revocation always wins: a key revoked while the database was up is refused through any later outage,
however it was revoked (through this process's API, or elsewhere and then refused here once)."""

from __future__ import annotations

from contextlib import contextmanager

from sqlalchemy.exc import OperationalError

from service.registry import keys
from tests.conftest import ALL_SCOPES
from tests.record import record
from tests.security.conftest import bearer


@contextmanager
def database_outage(app):
    """Every key check fails as when the database is unreachable (the registry itself is left alone)."""
    db = app.state.db
    real = db.key_reader

    @contextmanager
    def unreachable():
        raise OperationalError("SELECT api_keys", {}, ConnectionRefusedError("connection refused"))
        yield  # pragma: no cover

    db.key_reader = unreachable
    try:
        yield
    finally:
        db.key_reader = real


def key_id(client, admin_headers, key: str) -> int:
    return next(k["id"] for k in client.get("/v1/keys", headers=admin_headers).json() if k["prefix"] == key[:12])


def test_a_key_revoked_through_the_api_is_refused_during_an_outage(app, client, admin_headers, make_key):
    user = make_key(*ALL_SCOPES)
    assert client.get("/v1/optimizers", headers=bearer(user)).status_code == 200   # checked: in the grace cache
    with database_outage(app):   # the grace period works: a live key goes on
        assert client.get("/v1/sessions", headers=bearer(user)).status_code == 200
    assert client.delete(f"/v1/keys/{key_id(client, admin_headers, user)}", headers=admin_headers).status_code == 204
    with database_outage(app):
        r = client.get("/v1/sessions", headers=bearer(user))
    assert r.status_code in (401, 503), r.text
    assert r.json()["error"]["code"] in ("unauthorized", "database_not_ready")
    record("revocation:api", status_during_outage=r.status_code)


def test_a_key_revoked_elsewhere_is_refused_during_an_outage_once_refused_here(app, client, make_key):
    """Another API process revoked it (here: straight in the database); this process's next check got a 401,
    and from then on the grace cache no longer lets it in."""
    user = make_key(*ALL_SCOPES)
    assert client.get("/v1/sessions", headers=bearer(user)).status_code == 200
    with app.state.db.session() as s:
        row = keys.authenticate(s, user)
        keys.revoke_key(s, row.id)
        s.commit()
    assert client.get("/v1/sessions", headers=bearer(user)).status_code == 401
    with database_outage(app):
        r = client.get("/v1/sessions", headers=bearer(user))
    assert r.status_code in (401, 503), r.text
