"""The registry over HTTP: optimizers, their immutable numbered versions, aliases and references."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from service.api.body import read_body
from service.api.deps import AdminKey, AppSettings, CurrentKey, DbSession, VersionInUseCheck
from service.api.schemas import (
    MAX_DB_INT,
    AliasOut,
    AliasUpdate,
    DbId,
    OptimizerDetail,
    OptimizerSummary,
    VersionDetail,
)
from service.errors import BadRequest, UnsupportedMediaType
from service.registry import service as registry
from service.registry.names import check_name

router = APIRouter(prefix="/v1/optimizers", tags=["optimizers"])

VersionNumber = Annotated[DbId, Path(ge=1, le=MAX_DB_INT, description="version number, from 1")]
DIGEST_HEADER = "X-L2O-SHA256"
UPLOAD_TYPES = ("application/octet-stream", "application/x-safetensors")


@router.get("")
def list_optimizers(db: DbSession, _: CurrentKey) -> list[OptimizerSummary]:
    return [OptimizerSummary.of(o) for o in registry.list_optimizers(db)]


@router.get("/resolve")
def resolve(db: DbSession, _: CurrentKey,
            ref: Annotated[str, Query(description="`name`, `name:N` or `name@alias`")]) -> VersionDetail:
    return VersionDetail.of(registry.resolve(db, ref))


@router.get("/{name}")
def get_optimizer(name: str, db: DbSession, _: CurrentKey) -> OptimizerDetail:
    return OptimizerDetail.of(registry.get_optimizer(db, name))


@router.get("/{name}/versions/{version}")
def get_version(name: str, version: VersionNumber, db: DbSession, _: CurrentKey) -> VersionDetail:
    return VersionDetail.of(registry.get_version(db, name, version))


@router.get("/{name}/versions/{version}/checkpoint", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}},
                             "description": f"the safetensors bytes; their sha256 in {DIGEST_HEADER}"}})
def download_checkpoint(name: str, version: VersionNumber, db: DbSession, _: CurrentKey) -> Response:
    row = registry.get_version(db, name, version)
    return Response(registry.checkpoint_bytes(db, row), media_type="application/octet-stream", headers={
        DIGEST_HEADER: row.sha256,
        "ETag": f'"{row.sha256}"',
        "Content-Disposition": f'attachment; filename="{name}-v{version}.safetensors"',
    })


@router.post("/{name}/versions", status_code=201, openapi_extra={"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def upload_version(
    name: str, request: Request, response: Response, db: DbSession, settings: AppSettings, _: AdminKey,
    x_l2o_sha256: Annotated[str | None, Header(description="sha256 (hex) of the body, checked if sent")] = None,
    x_l2o_config: Annotated[str | None, Header(
        description="config JSON, for a safetensors file that does not carry one in its metadata")] = None,
) -> VersionDetail:
    """Upload a checkpoint as the raw safetensors body. It is checked before it is stored: it must load,
    match its config's architecture and produce finite updates on a probe gradient."""
    check_name(name)
    config = _json_header("X-L2O-Config", x_l2o_config)
    _check_upload_type(request)
    data = bytes(await read_body(request, settings.max_upload_bytes, "L2O_MAX_UPLOAD_BYTES"))

    def register() -> VersionDetail:
        version = registry.register_version(db, name, data, expected_sha256=x_l2o_sha256, config=config)
        db.commit()
        return VersionDetail.of(version)

    detail = await run_in_threadpool(register)
    response.headers["Location"] = f"/v1/optimizers/{name}/versions/{detail.version}"
    return detail


@router.delete("/{name}/versions/{version}", status_code=204)
def delete_version(name: str, version: VersionNumber, db: DbSession, _: AdminKey,
                   in_use: VersionInUseCheck) -> Response:
    """Delete a version and the aliases that point at it; 409 while a live session uses it."""
    registry.delete_version(db, name, version, is_version_in_use=in_use)
    db.commit()
    return Response(status_code=204)


@router.put("/{name}/aliases/{alias}")
def set_alias(name: str, alias: str, body: AliasUpdate, db: DbSession, _: AdminKey) -> AliasOut:
    row = registry.set_alias(db, name, alias, body.version)
    db.commit()
    return AliasOut.of(row)


@router.delete("/{name}/aliases/{alias}", status_code=204)
def delete_alias(name: str, alias: str, db: DbSession, _: AdminKey) -> Response:
    registry.delete_alias(db, name, alias)
    db.commit()
    return Response(status_code=204)


def _check_upload_type(request: Request) -> None:
    media_type = request.headers.get("content-type", "application/octet-stream").split(";")[0].strip().lower()
    if media_type not in UPLOAD_TYPES:
        raise UnsupportedMediaType(f"send the checkpoint as the raw body with Content-Type "
                                   f"application/octet-stream, not {media_type}", detail={"content_type": media_type})


def _json_header(header: str, value: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the parser recurses
        raise BadRequest(f"{header} is not valid JSON: {exc}", detail={"header": header}) from exc
    if not isinstance(parsed, dict):
        raise BadRequest(f"{header} must be a JSON object", detail={"header": header})
    return parsed
