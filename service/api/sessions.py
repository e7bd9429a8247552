"""Sessions and steps over HTTP: each handler reads its input, calls one SessionService method, answers.

    POST   /v1/sessions                 {"optimizer": "name@alias", "shapes": {...}} -> the session
    POST   /v1/sessions/resume          a state from GET .../state (safetensors body) -> a new session
    GET    /v1/sessions                 the caller's live sessions, a page at a time (Link: rel="next")
    GET    /v1/sessions/{id}            one session
    DELETE /v1/sessions/{id}
    POST   /v1/sessions/{id}/step       gradients in (JSON or safetensors), updates out in the same format
    GET    /v1/sessions/{id}/state      the LSTM state and step count (safetensors)

Every route needs a key with the `optimize` scope; a session is visible only to the key that made it.
"""

from __future__ import annotations

from typing import Annotated

import pydantic
from fastapi import APIRouter, Depends, Query, Request, Response

from service.api.body import read_body
from service.api.deps import AppSettings, OptimizeKey
from service.api.schemas import SessionCreate, SessionOut
from service.errors import UnsupportedMediaType, ValidationError
from service.sessions import wire
from service.sessions.service import STATE_TYPE, SessionService

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

BINARY = {"schema": {"type": "string", "format": "binary"}}
STEP_BODY = {"requestBody": {"required": True, "content": {
    wire.JSON_TYPE: {"schema": {"type": "object", "properties": {
        "step": {"type": "integer", "minimum": 0, "description": "steps the session has applied so far"},
        "grads": {"type": "object", "additionalProperties": {},
                  "description": "each parameter's gradient as nested lists shaped like the parameter"}}}},
    wire.SAFETENSORS_TYPE: BINARY, wire.OCTET_TYPE: BINARY}}}
STEP_ANSWER = {200: {"description": "the updates by name (θ ← θ + update), in the request's format, and the "
                                    "session's new step count",
                     "content": {wire.JSON_TYPE: {}, wire.SAFETENSORS_TYPE: {}}}}
NO_STORE = {"Cache-Control": "no-store"}
MAX_PAGE = 100
# A page cursor: the last session's creation time (a float's repr) and id, as the Link header gives them.
CURSOR_PATTERN = r"^[0-9]{1,12}(\.[0-9]{1,20})?~s_[A-Za-z0-9_-]{1,64}$"


async def get_sessions(request: Request) -> SessionService:
    return request.app.state.sessions


Sessions = Annotated[SessionService, Depends(get_sessions)]


@router.post("", status_code=201, openapi_extra={"requestBody": {"required": True, "content": {
    wire.JSON_TYPE: {"schema": SessionCreate.model_json_schema()}}}})
async def create_session(request: Request, response: Response, key: OptimizeKey, sessions: Sessions,
                         settings: AppSettings) -> SessionOut:
    """Open a session: the reference is resolved to one immutable version and a zero LSTM state allocated."""
    if wire.format_of(request.headers.get("content-type", wire.JSON_TYPE)) is not wire.WireFormat.JSON:
        raise UnsupportedMediaType("send the session spec as application/json; to resume from a state, "
                                   "POST it to /v1/sessions/resume")
    raw = await read_body(request, settings.step_max_body_bytes, "L2O_STEP_MAX_BODY_BYTES")
    try:
        spec = SessionCreate.model_validate_json(raw)
    except pydantic.ValidationError as exc:
        where = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise ValidationError(f"invalid session spec: {where}",
                              detail=[{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]) from exc
    info = await sessions.create(str(key.id), spec.optimizer, spec.shapes, state_dtype=spec.state_dtype)
    response.headers["Location"] = f"/v1/sessions/{info.id}"
    return SessionOut.of(info, sessions.limits.idle_timeout_s)


@router.post("/resume", status_code=201, openapi_extra={"requestBody": {"required": True, "content": {
    STATE_TYPE: BINARY, wire.OCTET_TYPE: BINARY}}})
async def resume_session(
    request: Request, response: Response, key: OptimizeKey, sessions: Sessions,
    optimizer: Annotated[str | None, Query(description="a reference that must resolve to the state's version; "
                                                       "default: the version named in the state")] = None,
) -> SessionOut:
    """Open a session that continues an exported state: same version (checked by digest), shapes, step count."""
    if wire.format_of(request.headers.get("content-type")) is not wire.WireFormat.SAFETENSORS:
        raise UnsupportedMediaType(f"send the state as the raw body with Content-Type {STATE_TYPE}")
    raw = await read_body(request, sessions.limits.max_state_bytes + wire.MAX_HEADER_BYTES,
                          "L2O_SESSION_MAX_STATE_BYTES")
    info = await sessions.create(str(key.id), optimizer, None, resume_state=raw)
    response.headers["Location"] = f"/v1/sessions/{info.id}"
    return SessionOut.of(info, sessions.limits.idle_timeout_s)


@router.get("")
async def list_sessions(
    response: Response, key: OptimizeKey, sessions: Sessions,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="most sessions in this page")] = MAX_PAGE,
    after: Annotated[str | None, Query(pattern=CURSOR_PATTERN, description="the cursor of the next page, from "
                                                                          "the previous page's Link header")] = None,
) -> list[SessionOut]:
    """The caller's live sessions, oldest first, a page at a time: when more may follow, a `Link` header
    with `rel="next"` names the next page."""
    cursor = None
    if after is not None:
        created, _, sid = after.partition("~")
        cursor = (float(created), sid)
    page = await sessions.list(str(key.id), limit=limit, after=cursor)
    if len(page) == limit:
        last = page[-1]
        response.headers["Link"] = f'</v1/sessions?limit={limit}&after={last.created_at!r}~{last.id}>; rel="next"'
    return [SessionOut.of(i, sessions.limits.idle_timeout_s) for i in page]


@router.get("/{session_id}")
async def get_session(session_id: str, key: OptimizeKey, sessions: Sessions) -> SessionOut:
    return SessionOut.of(await sessions.get(str(key.id), session_id), sessions.limits.idle_timeout_s)


@router.delete("/{session_id}", status_code=204)
async def delete_session(session_id: str, key: OptimizeKey, sessions: Sessions) -> Response:
    await sessions.delete(str(key.id), session_id)
    return Response(status_code=204)


@router.post("/{session_id}/step", response_class=Response, openapi_extra=STEP_BODY, responses=STEP_ANSWER)
async def step(session_id: str, request: Request, key: OptimizeKey, sessions: Sessions,
               settings: AppSettings) -> Response:
    """Apply one step. `step` must equal the session's count (applied) or count - 1 (a retry: the same
    answer again, byte for byte); anything else is 409 naming the step expected."""
    fmt = wire.format_of(request.headers.get("content-type"))
    # The session is found, and its gradients' largest body known, before a byte of the body is read.
    most = await sessions.step_body_limit(str(key.id), session_id, fmt)
    raw = await (read_body(request, most, f"the largest {fmt.value} step body this session's shapes can make")
                 if most < settings.step_max_body_bytes else
                 read_body(request, settings.step_max_body_bytes, "L2O_STEP_MAX_BODY_BYTES"))
    answer = await sessions.step(str(key.id), session_id, raw, fmt)
    # A memoryview: Starlette sends it as it is (a binary answer is a bytearray the step wrote into).
    return Response(memoryview(answer.body), media_type=answer.content_type, headers=NO_STORE)


@router.get("/{session_id}/state", response_class=Response,
            responses={200: {"content": {STATE_TYPE: {}}, "description": "the LSTM state (tensor `hc`) and step "
                             "count, with the optimizer version and digest in the metadata"}})
async def export_state(session_id: str, key: OptimizeKey, sessions: Sessions) -> Response:
    data = await sessions.export_state(str(key.id), session_id)
    return Response(data, media_type=STATE_TYPE, headers={
        **NO_STORE, "Content-Disposition": f'attachment; filename="{session_id}.state.safetensors"'})
