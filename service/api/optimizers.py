"""The registry over HTTP: optimizers, their immutable numbered versions, aliases and references, their
descriptions and tags, and evaluations on demand."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any
from urllib.parse import urlencode

import pydantic
from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from service.api.body import read_body
from service.api.deps import AdminKey, AppSettings, CurrentKey, DbSession, TrainKey, VersionInUseCheck
from service.api.job_schemas import JobOut
from service.api.jobs import queue
from service.api.schemas import (
    MAX_DB_INT,
    AliasOut,
    AliasUpdate,
    DbId,
    MetadataPatch,
    OptimizerDetail,
    OptimizerSummary,
    VersionDetail,
    VersionUpload,
)
from service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationError
from service.jobs import service as jobs
from service.jobs.spec import EvaluationRequest
from service.registry import service as registry
from service.registry.models import KeyGrant
from service.registry.names import NAME_RE, check_name

router = APIRouter(prefix="/v1/optimizers", tags=["optimizers"])

VersionNumber = Annotated[DbId, Path(ge=1, le=MAX_DB_INT, description="version number, from 1")]
DIGEST_HEADER = "X-L2O-SHA256"
UPLOAD_TYPES = ("application/octet-stream", "application/x-safetensors")
JSON_TYPE = "application/json"
MAX_PAGE = 100
# Room for an upload's JSON form around its base64 checkpoint: the metadata and the evaluation report.
JSON_UPLOAD_SLACK = 4 * 1024 * 1024


@router.get("")
def list_optimizers(
    response: Response, db: DbSession, _: CurrentKey,
    q: Annotated[str | None, Query(max_length=64, pattern=r"^[a-z0-9._-]*$",
                                   description="only names containing this")] = None,
    tag: Annotated[list[str], Query(max_length=16, description="`key:value` (that value) or `key` (any "
                                                               "value); repeat: every one must match")] = [],  # noqa: B006
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="most names in this page")] = MAX_PAGE,
    after: Annotated[str | None, Query(pattern=f"^{NAME_RE.pattern}$",
                                       description="the cursor of the next page (a name), from the "
                                                   "previous page's Link header")] = None,
) -> list[OptimizerSummary]:
    """Registered names in order, a page at a time (a `Link` header with `rel="next"` names the next page
    when more may follow), optionally only those whose name contains `q` and that hold every `tag`."""
    page = registry.search(db, contains=q, tag_filters=tuple(tag), after=after, limit=limit)
    if len(page) == limit:
        following = [("q", q)] if q else []
        following += [("tag", t) for t in tag] + [("limit", limit), ("after", page[-1].name)]
        response.headers["Link"] = f'</v1/optimizers?{urlencode(following)}>; rel="next"'
    return [OptimizerSummary.of(o) for o in page]


@router.get("/resolve")
def resolve(db: DbSession, _: CurrentKey,
            ref: Annotated[str, Query(description="`name`, `name:N` or `name@alias`")]) -> VersionDetail:
    return VersionDetail.of(registry.resolve(db, ref))


@router.get("/{name}")
def get_optimizer(name: str, db: DbSession, _: CurrentKey) -> OptimizerDetail:
    return OptimizerDetail.of(registry.get_optimizer(db, name))


@router.patch("/{name}")
def update_optimizer(name: str, body: MetadataPatch, db: DbSession, key: TrainKey) -> OptimizerDetail:
    """Edit the name's description and tags (a merge patch). Allowed to the key whose job created the name,
    and to admin keys, as publishing is."""
    optimizer = registry.update_optimizer(db, name, _editor(key), **_patch(body))
    db.commit()
    return OptimizerDetail.of(registry.get_optimizer(db, optimizer.name))


@router.delete("/{name}", status_code=204)
def delete_optimizer(name: str, db: DbSession, _: AdminKey, in_use: VersionInUseCheck) -> Response:
    """Delete a name with all its versions, aliases and tags; 409 while a live session uses any version."""
    registry.delete_optimizer(db, name, is_version_in_use=in_use)
    db.commit()
    return Response(status_code=204)


@router.get("/{name}/versions/{version}")
def get_version(name: str, version: VersionNumber, db: DbSession, _: CurrentKey) -> VersionDetail:
    return VersionDetail.of(registry.get_version(db, name, version))


@router.patch("/{name}/versions/{version}")
def update_version(name: str, version: VersionNumber, body: MetadataPatch, db: DbSession,
                   key: TrainKey) -> VersionDetail:
    """Edit a version's description and tags (a merge patch); the same keys as for its name."""
    registry.update_version(db, name, version, _editor(key), **_patch(body))
    db.commit()
    return VersionDetail.of(registry.get_version(db, name, version))


@router.post("/{name}/versions/{version}/evaluate", status_code=202)
async def evaluate_version(name: str, version: VersionNumber, request: Request, response: Response,
                           db: DbSession, key: TrainKey, body: EvaluationRequest | None = None) -> JobOut:
    """Queue a job that evaluates this version against the tuned baselines and attaches the report to it
    as its evaluation (replacing any before it). The same keys as for editing the name; the answer is the
    queued job (follow it under /v1/jobs)."""
    return await queue(request, response, db, lambda limits: jobs.submit_evaluation(
        db, key, name, version, body or EvaluationRequest(), limits))


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
    """Upload a checkpoint as the raw safetensors body, or as JSON (`VersionUpload`: the checkpoint in
    base64 with the version's description, tags and evaluation report, and the name's metadata). It is
    checked before it is stored: it must load, match its config's architecture and produce finite updates
    on a probe gradient."""
    check_name(name)
    config = _json_header("X-L2O-Config", x_l2o_config)
    if _upload_type(request) == JSON_TYPE:
        raw = await read_body(request, settings.max_upload_bytes * 4 // 3 + JSON_UPLOAD_SLACK, "L2O_MAX_UPLOAD_BYTES")
        upload = _parse_upload(raw)
        data, config = _decode_checkpoint(upload.checkpoint, settings.max_upload_bytes), upload.config or config
    else:
        upload = None
        data = bytes(await read_body(request, settings.max_upload_bytes, "L2O_MAX_UPLOAD_BYTES"))

    def register() -> VersionDetail:
        extra: dict[str, Any] = {}
        if upload is not None:
            extra = {"description": upload.description, "tag_values": upload.tags,
                     "evaluation": upload.evaluation.model_dump(mode="json") if upload.evaluation else None}
        version = registry.register_version(db, name, data, expected_sha256=x_l2o_sha256, config=config, **extra)
        if upload is not None and upload.optimizer is not None:
            registry.update_optimizer(db, name, registry.Publisher(None, True), **_patch(upload.optimizer))
        db.commit()
        return VersionDetail.of(registry.get_version(db, name, version.version))

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


def _upload_type(request: Request) -> str:
    media_type = request.headers.get("content-type", "application/octet-stream").split(";")[0].strip().lower()
    if media_type not in (*UPLOAD_TYPES, JSON_TYPE):
        raise UnsupportedMediaType(f"send the checkpoint as the raw body with Content-Type "
                                   f"application/octet-stream (or as JSON with {JSON_TYPE}), not {media_type}",
                                   detail={"content_type": media_type})
    return media_type


def _parse_upload(raw: bytes | bytearray) -> VersionUpload:
    try:
        return VersionUpload.model_validate_json(raw)
    except pydantic.ValidationError as exc:
        where = "; ".join(f"{'.'.join(map(str, ('body', *e['loc'])))}: {e['msg']}" for e in exc.errors())
        raise ValidationError(f"invalid request: {where}",
                              detail=[{"loc": ["body", *e["loc"]], "msg": e["msg"]} for e in exc.errors()]) from exc


def _decode_checkpoint(text: str, max_bytes: int) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValidationError(f"invalid request: body.checkpoint: not valid base64 ({exc})",
                              detail={"field": "checkpoint"}) from None
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the checkpoint is {len(data)} bytes, over the limit of {max_bytes} "
                              "(L2O_MAX_UPLOAD_BYTES)", detail={"limit": max_bytes})
    return data


def _editor(key: KeyGrant) -> registry.Publisher:
    return registry.Publisher(key.id, key.has_scope("admin"))


def _patch(body: Any) -> dict[str, Any]:
    """The service's keyword arguments for the fields a merge patch sent (a field left out is unchanged)."""
    sent = body.model_fields_set
    out: dict[str, Any] = {}
    if "description" in sent:
        out["description"] = body.description
    if "tags" in sent and body.tags is not None:
        out["tag_patch"] = body.tags
    return out


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
