"""API keys: random 256-bit tokens, shown once, stored only as their sha256, each with a set of scopes.

Scopes: `optimize` (sessions and steps), `train` (jobs), `admin` (registry writes, keys). `optimize` and
`train` grant only themselves; `admin` implies both (models.grants), as a superuser role does, so the one
key an operator makes first can do everything.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from collections.abc import Iterable
from typing import Literal, get_args

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from service.errors import NotFound, Unauthorized, ValidationError
from service.registry import repository
from service.registry.models import ApiKey, KeyGrant, utcnow

Scope = Literal["optimize", "train", "admin"]
SCOPES: tuple[str, ...] = get_args(Scope)
KEY_PREFIX = "l2o_"
SHOWN_CHARS = 12  # "l2o_" and 8 characters: enough to tell keys apart, far too few to guess the rest


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_scopes(scopes: Iterable[str]) -> list[str]:
    scopes = list(dict.fromkeys(scopes))
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise ValidationError(f"unknown scope(s) {', '.join(map(repr, unknown))}: choose from {', '.join(SCOPES)}",
                              detail={"unknown": unknown, "allowed": list(SCOPES)})
    if not scopes:
        raise ValidationError(f"a key needs at least one scope: choose from {', '.join(SCOPES)}")
    return sorted(scopes, key=SCOPES.index)


def create_key(db: Session, name: str, scopes: Iterable[str]) -> tuple[ApiKey, str]:
    """A new key row and the key itself, which exists nowhere else: the caller shows it once."""
    name = name.strip()
    if not 1 <= len(name) <= 128:
        raise ValidationError("a key's name must be 1 to 128 characters", detail={"name": name})
    key = generate_key()
    row = repository.add_key(db, ApiKey(name=name, prefix=key[:SHOWN_CHARS], key_hash=hash_key(key),
                                        scopes=check_scopes(scopes)))
    return row, key


def authenticate(db: Session | Connection | sqlite3.Connection, key: str) -> KeyGrant:
    """The live key for `key`, else Unauthorized (the message does not say which keys exist)."""
    digest = hash_key(key)
    row = repository.get_key_by_hash(db, digest)
    # The lookup is by hash already; the constant-time compare keeps the check itself free of timing leaks.
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        raise Unauthorized("invalid API key")
    if row.revoked:
        raise Unauthorized("this API key has been revoked")
    return row


def revoke_key(db: Session, key_id: int) -> ApiKey:
    row = repository.get_key(db, key_id)
    if row is None:
        raise NotFound(f"no API key with id {key_id}", detail={"id": key_id})
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        db.flush()
    return row


def list_keys(db: Session) -> list[ApiKey]:
    return repository.list_keys(db)
