"""Control characters in every name-bearing field of every route, sent over real HTTP: each request gets an
answer (never a dropped connection, never a 5xx), names are refused with a 4xx naming the field, nothing is
stored under such a name, and no response header carries one.

A route the tables below do not describe fails `test_every_route_is_described`, so a new route cannot
escape the sweep."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi.routing import APIRoute

from service.app import ROUTERS, create_app
from service.registry import keys
from service.sessions import wire
from tests.conftest import checkpoint_bytes
from tests.jobs.conftest import tiny_spec
from tests.live_server import ServerThread
from tests.record import record
from tests.security.conftest import OCTET_TYPE, SHAPES, ST_TYPE, bearer, grads, make_settings

CONTROLS = ["\n", "\r", "\r\n", "\x00", "\t", "\x1b", "\x7f", "\x85", "\u2028", "\x0b", "\x0c"]
JSON = {"Content-Type": "application/json"}

# Path parameters: the value each one gets, around the control character, so that without it the request
# would name something that exists.
PATH_VALUES = {"name": "opt", "alias": "prod", "version": "1", "key_id": "1", "session_id": "{sid}",
               "job_id": "{job}"}


def json_body(**fields: Any) -> Callable[[str, dict], tuple[bytes, dict]]:
    def make(bad: str, world: dict) -> tuple[bytes, dict]:
        return json.dumps({k: v(bad, world) if callable(v) else v for k, v in fields.items()}).encode(), JSON
    return make


def step_json(bad: str, world: dict) -> tuple[bytes, dict]:
    g = {f"layer.bias{bad}" if n == "layer.bias" else n: t.tolist() for n, t in grads(1).items()}
    return json.dumps({"step": 1, "grads": g}).encode(), JSON


def step_safetensors(bad: str, world: dict) -> tuple[bytes, dict]:
    g = {f"layer.bias{bad}" if n == "layer.bias" else n: t for n, t in grads(1).items()}
    return wire.encode(wire.StepMessage(1, g), wire.WireFormat.SAFETENSORS, field="grads"), ST_TYPE


def forged_state(bad: str, world: dict) -> tuple[bytes, dict]:
    state = world["state"]
    n = int.from_bytes(state[:8], "little")
    header = json.loads(state[8:8 + n])
    meta = header["__metadata__"]
    shapes = [[name + bad, shape] for name, shape in json.loads(meta["shapes"])]
    header["__metadata__"] = {**meta, "optimizer": meta["optimizer"] + bad, "shapes": json.dumps(shapes)}
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head + state[8 + n:], ST_TYPE


# (method, path) -> [(what, query params, body maker)]: each name-bearing field a route reads besides its path.
FIELDS: dict[tuple[str, str], list[tuple[str, Callable[[str], dict] | None, Callable | None]]] = {
    ("POST", "/v1/jobs"): [("job name", None, json_body(**{**tiny_spec("x"), "name": lambda b, w: "j" + b}))],
    ("POST", "/v1/keys"): [("key name", None, json_body(name=lambda b, w: "key" + b, scopes=["optimize"]))],
    ("POST", "/v1/sessions"): [
        ("session optimizer", None, json_body(optimizer=lambda b, w: "opt:1" + b, shapes=SHAPES)),
        ("parameter name", None, json_body(optimizer="opt:1", shapes=lambda b, w: {"w" + b: [2]}))],
    ("POST", "/v1/sessions/resume"): [("state's names", lambda b: {}, forged_state),
                                      ("optimizer query", lambda b: {"optimizer": "opt:1" + b}, forged_state)],
    ("POST", "/v1/sessions/{session_id}/step"): [("gradient name (JSON)", None, step_json),
                                                 ("gradient name (safetensors)", None, step_safetensors)],
    ("POST", "/v1/optimizers/{name}/versions"): [
        ("checkpoint", None, lambda b, w: (checkpoint_bytes(seed=3), OCTET_TYPE))],
    ("PUT", "/v1/optimizers/{name}/aliases/{alias}"): [("alias target", None, json_body(version=1))],
    ("GET", "/v1/optimizers/resolve"): [("reference", lambda b: {"ref": "opt@prod" + b}, None)],
    ("GET", "/v1/jobs"): [("state filter", lambda b: {"state": "queued" + b}, None)],
    ("GET", "/ui/compare"): [("compared references", lambda b: {"a": "opt:1" + b, "b": "opt@prod" + b}, None)],
}
# Routes with no name-bearing field but their path: swept through their path parameters, if any.
NO_FIELDS = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/v1/keys"),
             ("GET", "/v1/optimizers"), ("GET", "/v1/sessions"), ("GET", "/"), ("GET", "/ui"), ("GET", "/ui/"),
             ("GET", "/ui/login"), ("GET", "/ui/optimizers"), ("GET", "/ui/jobs"), ("GET", "/ui/jobs/new"),
             ("GET", "/ui/sessions"), ("GET", "/docs"), ("GET", "/docs/oauth2-redirect"), ("GET", "/redoc")}


def routes() -> list[tuple[str, str]]:
    """Every route of every router the app serves (the dashboard's pages too, which OpenAPI leaves out)."""
    return sorted({(m, r.path) for router in ROUTERS for r in router.routes if isinstance(r, APIRoute)
                   for m in r.methods if m not in ("HEAD", "OPTIONS")})


ROUTES = routes()


def test_every_route_is_described():
    missing = [r for r in ROUTES if r not in FIELDS and r not in NO_FIELDS and "{" not in r[1]]
    assert missing == [], f"routes with no entry in FIELDS or NO_FIELDS: {missing}"
    assert not (set(FIELDS) | NO_FIELDS) - set(ROUTES), "entries for routes that no longer exist"


@pytest.fixture(scope="module")
def world(tmp_path_factory, sqlite_migrated):
    monkeypatch = pytest.MonkeyPatch()
    from tests.security.conftest import HeldExecutor

    monkeypatch.setattr("service.jobs.lifespan.make_executor", lambda settings, db: HeldExecutor())
    app = create_app(make_settings(tmp_path_factory.mktemp("ctl"), sqlite_migrated))
    try:
        with ServerThread(app) as url:
            with app.state.db.session() as s:
                _, key = keys.create_key(s, "admin", ["admin"])
                s.commit()
            with httpx.Client(base_url=url, headers=bearer(key), timeout=30) as http:
                assert http.post("/v1/optimizers/opt/versions", content=checkpoint_bytes(seed=3),
                                 headers=OCTET_TYPE).status_code == 201
                assert http.put("/v1/optimizers/opt/aliases/prod", json={"version": 1}).status_code == 200
                sid = http.post("/v1/sessions", json={"optimizer": "opt:1", "shapes": SHAPES}).json()["id"]
                state = http.get(f"/v1/sessions/{sid}/state").content
                job = http.post("/v1/jobs", json=tiny_spec("named")).json()["id"]
                yield {"http": http, "sid": sid, "job": job, "state": state, "app": app}
    finally:
        monkeypatch.undo()


def requests_for(method: str, path: str, bad: str, world: dict) -> list[tuple[str, str, dict, bytes | None, dict]]:
    """(what, url, params, body, headers) for each way this route takes `bad`."""
    real = {k: v.format(sid=world["sid"], job=world["job"]) for k, v in PATH_VALUES.items()}
    params_in_path = re.findall(r"\{(\w+)\}", path)
    out = []

    def fill(spoiled: str | None) -> str:
        # Percent-encoded, as a client must send them: the server decodes them into the parameter.
        return re.sub(r"\{(\w+)\}", lambda m: quote(real[m.group(1)] + (bad if m.group(1) == spoiled else ""),
                                                   safe=""), path)

    def body_of(maker, spoil: bool) -> tuple[bytes | None, dict]:
        return maker(bad if spoil else "", world) if maker is not None else (None, {})

    fields = FIELDS.get((method, path), [])
    for p in params_in_path:   # each path parameter spoiled in turn, the body left valid
        body, headers = body_of(fields[0][2], False) if fields else (None, {})
        out.append((f"path {p}", fill(p), {}, body, headers))
    for what, query, maker in fields:   # each field spoiled in turn, the path left valid
        body, headers = body_of(maker, True)
        out.append((what, fill(None), query(bad) if query else {}, body, headers))
    return out


# Fields that are names: a control character in them is refused (4xx), never stored.
REFUSED = {"path name", "path alias", "path version", "path key_id", "path session_id", "path job_id", "job name",
           "key name", "session optimizer", "parameter name", "state's names", "optimizer query",
           "gradient name (JSON)", "gradient name (safetensors)", "reference", "state filter"}


@pytest.mark.parametrize("bad", CONTROLS, ids=[repr(c) for c in CONTROLS])
def test_control_characters_in_every_name_get_an_answer_and_are_refused(world, bad):
    http: httpx.Client = world["http"]
    sent = 0
    for method, path in ROUTES:
        for what, url, params, body, headers in requests_for(method, path, bad, world):
            try:
                response = http.request(method, url, params=params, content=body, headers=headers)
            except httpx.TransportError as exc:
                pytest.fail(f"{method} {path} ({what}, {bad!r}): the connection dropped: {exc!r}")
            sent += 1
            where = (method, path, what, bad, response.status_code, response.text[:300])
            assert response.status_code < 500, where
            for name, value in response.headers.items():
                assert not any(c in value for c in CONTROLS if c != "\t"), (where, name, value)
            if what in REFUSED and not path.startswith("/ui"):
                assert 400 <= response.status_code < 500, where
    # Nothing was made under a spoiled name.
    names = [o["name"] for o in http.get("/v1/optimizers").json()]
    assert names == ["opt"], names
    assert list(http.get("/v1/optimizers/opt").json()["aliases"]) == ["prod"]
    assert [k["name"] for k in http.get("/v1/keys").json()] == ["admin"]
    assert [j["name"] for j in http.get("/v1/jobs").json()] == ["named"]
    assert [s["id"] for s in http.get("/v1/sessions").json()] == [world["sid"]]
    record(f"control:{bad!r}", requests=sent)
