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
