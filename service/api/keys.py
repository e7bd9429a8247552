"""API key management (admin scope): create (the key is shown once), list, revoke."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from service.api.deps import AdminKey, DbSession
from service.api.schemas import MAX_DB_INT, DbId, KeyCreate, KeyCreated, KeyOut
from service.registry import keys

router = APIRouter(prefix="/v1/keys", tags=["keys"])


@router.post("", status_code=201)
def create_key(body: KeyCreate, db: DbSession, _: AdminKey) -> KeyCreated:
    row, key = keys.create_key(db, body.name, body.scopes)
    db.commit()
    return KeyCreated(**KeyOut.of(row).model_dump(), key=key)


@router.get("")
def list_keys(db: DbSession, _: AdminKey) -> list[KeyOut]:
    return [KeyOut.of(k) for k in keys.list_keys(db)]


@router.delete("/{key_id}", status_code=204)
def revoke_key(key_id: Annotated[DbId, Path(ge=1, le=MAX_DB_INT)], request: Request, db: DbSession,
               _: AdminKey) -> Response:
    keys.revoke_key(db, key_id)
    db.commit()
    request.app.state.key_cache.forget_id(key_id)   # a database outage from now on must not revive it
    return Response(status_code=204)
