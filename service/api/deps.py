"""Typed dependencies for handlers: the database session, the caller's API key, scope checks.

    def handler(db: DbSession, key: AdminKey) -> ...:      # 401 without a valid key, 403 without `admin`,
                                                           # 429 when the key is over its rate limit

Handlers own the transaction: they call a service function, then `db.commit()`. A session that ends
without commit is rolled back, so an error leaves nothing half-written.

Dependencies that only read memory are `async def`: FastAPI runs a plain `def` dependency on a worker
thread, and each such hop costs a step request more than the check itself. Those that touch the
database (the key check) stay plain functions, off the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.api.key_cache import KeyCache
from service.api.ratelimit import check_rate
from service.config import Settings
from service.errors import DatabaseNotReady, Forbidden, Unauthorized
from service.registry import keys
from service.registry.db import UNREACHABLE
from service.registry.keys import Scope
from service.registry.models import KeyGrant

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer l2o_...`")


def get_db(request: Request) -> Iterator[Session]:
    with request.app.state.db.session() as session:
        yield session


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


DbSession = Annotated[Session, Depends(get_db)]
AppSettings = Annotated[Settings, Depends(get_settings)]


def current_key(request: Request,
                credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> KeyGrant:
    if credentials is None:
        if request.headers.get("authorization"):
            raise Unauthorized("malformed Authorization header: expected `Bearer <key>`")
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
    cache: KeyCache = request.app.state.key_cache
    try:
        # A connection of its own, returned at once: the request's DbSession would hold a pooled connection
        # for the whole request, so a step (which needs no database) would pin one for its torch work and a
        # burst of requests that need a second connection would starve the pool. A bare connection, not
        # a Session: this check runs on every request.
        with request.app.state.db.key_reader() as conn:
            key = keys.authenticate(conn, credentials.credentials)
    except Unauthorized:
        cache.forget(keys.hash_key(credentials.credentials))   # revoked since it was cached: never again
        raise
    except UNREACHABLE as exc:
        key = cache.recall(keys.hash_key(credentials.credentials))
        if key is None:
            raise DatabaseNotReady("the database is unreachable, so the API key cannot be checked; retry "
                                   "shortly", headers={"Retry-After": "1"}) from exc
    else:
        cache.remember(key)
    check_rate(request.app.state.rate_limiter, str(key.id))
    return key


CurrentKey = Annotated[KeyGrant, Depends(current_key)]


def require_scope(scope: Scope) -> Callable[[KeyGrant], KeyGrant]:
    """A dependency that passes the caller's key on when it holds `scope`, else 403."""
    if scope not in keys.SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    async def key_with_scope(key: CurrentKey) -> KeyGrant:
        if not key.has_scope(scope):
            raise Forbidden(f"this API key lacks the {scope!r} scope",
                            detail={"required": scope, "granted": key.scopes})
        return key

    key_with_scope.scope = scope  # type: ignore[attr-defined]  # lets tests find each route's scope
    return key_with_scope


OPTIMIZE_SCOPE = require_scope("optimize")
AdminKey = Annotated[KeyGrant, Depends(require_scope("admin"))]
OptimizeKey = Annotated[KeyGrant, Depends(OPTIMIZE_SCOPE)]
TrainKey = Annotated[KeyGrant, Depends(require_scope("train"))]


def version_in_use_check(request: Request) -> Callable[[int], bool]:
    """The app's `is_version_in_use(version_id) -> bool`; the sessions component replaces the default."""
    return request.app.state.is_version_in_use


VersionInUseCheck = Annotated[Callable[[int], bool], Depends(version_in_use_check)]
