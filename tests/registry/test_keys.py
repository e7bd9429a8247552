"""API keys: random, stored only as a hash, scoped, revocable."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from service.errors import NotFound, Unauthorized, ValidationError
from service.registry import keys
from service.registry.db import Database
from service.registry.models import ApiKey


@pytest.fixture
def db(database_url):
    database = Database(database_url)
    yield database
    database.dispose()


def test_keys_are_random_and_long():
    made = {keys.generate_key() for _ in range(50)}
    assert len(made) == 50
    for key in made:
        assert key.startswith("l2o_") and len(key) - 4 >= 43  # 32 random bytes, url-safe base64


def test_only_the_hash_is_stored_and_the_key_authenticates(db):
    with db.session() as s:
        row, key = keys.create_key(s, "ci", ["train", "optimize", "train"])
        s.commit()
    with db.session() as s:
        stored = s.scalars(select(ApiKey)).one()
        assert stored.key_hash == keys.hash_key(key) and key not in (stored.key_hash, stored.prefix)
        assert stored.scopes == ["optimize", "train"]
        assert keys.authenticate(s, key).id == row.id
        with pytest.raises(Unauthorized, match="invalid API key"):
            keys.authenticate(s, key + "x")


def test_a_revoked_key_no_longer_authenticates(db):
    with db.session() as s:
        row, key = keys.create_key(s, "ci", ["optimize"])
        keys.revoke_key(s, row.id)
        s.commit()
    with db.session() as s:
        with pytest.raises(Unauthorized, match="revoked"):
            keys.authenticate(s, key)
        with pytest.raises(NotFound):
            keys.revoke_key(s, row.id + 100)


@pytest.mark.parametrize("scopes, fragment", [([], "at least one"), (["root"], "unknown scope")])
def test_bad_scopes_are_refused_and_nothing_is_written(db, scopes, fragment):
    with db.session() as s:
        with pytest.raises(ValidationError, match=fragment):
            keys.create_key(s, "x", scopes)
        s.commit()
        assert keys.list_keys(s) == []


def test_the_per_request_key_reader_sees_a_revoke_at_once(db):
    with db.session() as s:
        row, key = keys.create_key(s, "ci", ["optimize"])
        s.commit()
    with db.key_reader() as conn:
        assert keys.authenticate(conn, key).id == row.id
    with db.session() as s:   # another connection commits the revoke
        keys.revoke_key(s, row.id)
        s.commit()
    with db.key_reader() as conn:   # on SQLite, the connection this thread kept
        with pytest.raises(Unauthorized, match="revoked"):
            keys.authenticate(conn, key)


def test_a_key_reader_that_cannot_read_raises_what_the_engine_raises_and_recovers(tmp_path):
    from service.registry import migrate, repository
    from service.registry.db import UNREACHABLE

    url = f"sqlite:///{tmp_path / 'l2o.db'}"
    db = Database(url)
    try:
        with pytest.raises(UNREACHABLE, match="no such table"), db.key_reader() as conn:
            repository.get_key_by_hash(conn, keys.hash_key("l2o_x"))   # the schema is not there yet
        migrate.ensure_schema(url, embedded=True)
        with db.key_reader() as conn:
            assert repository.get_key_by_hash(conn, keys.hash_key("l2o_x")) is None
    finally:
        db.dispose()


def test_a_sqlite_uri_with_options_is_read_through_the_engine(tmp_path):
    from service.registry import migrate, repository

    path = tmp_path / "l2o.db"
    migrate.ensure_schema(f"sqlite:///{path}", embedded=True)
    writer = Database(f"sqlite:///{path}")
    with writer.session() as s:
        row, key = keys.create_key(s, "ci", ["optimize"])
        s.commit()
    writer.dispose()
    db = Database(f"sqlite:///file:{path}?mode=ro&uri=true")   # read-only, as the URI says
    try:
        with db.key_reader() as conn:
            assert repository.get_key_by_hash(conn, keys.hash_key(key)).id == row.id
    finally:
        db.dispose()
