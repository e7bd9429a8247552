"""A step is priced before its body is read: the key is checked, the session found, and the declared size
compared with the largest body that session's gradients can make (in the request's format); a larger one
is 413 at once, an unknown session 404 at once, and a chunked body is cut off at that size."""

from __future__ import annotations

import json
import socket

import pytest

from service.app import create_app
from service.registry import keys
from service.sessions import wire
from tests.conftest import checkpoint_bytes
from tests.live_server import ServerThread
from tests.record import record
from tests.security.conftest import OCTET_TYPE, SHAPES, ST_TYPE, bearer, make_settings
from tests.security.test_body_limits import CountingApp, chunked_post

STEP_LIMIT = 8 * 2**20   # L2O_STEP_MAX_BODY_BYTES: far above what this session's gradients can take


@pytest.fixture
def live(tmp_path, sqlite_migrated):
    import httpx

    app = create_app(make_settings(tmp_path, sqlite_migrated, step_max_body_bytes=STEP_LIMIT, body_timeout_s=30))
    counting = CountingApp(app)
    with ServerThread(counting) as url:
        with app.state.db.session() as s:
            _, key = keys.create_key(s, "k", ["admin", "optimize"])
            s.commit()
        with httpx.Client(base_url=url, headers=bearer(key), timeout=10) as http:
            assert http.post("/v1/optimizers/opt/versions", content=checkpoint_bytes(seed=3),
                             headers=OCTET_TYPE).status_code == 201
            sid = http.post("/v1/sessions", json={"optimizer": "opt:1", "shapes": SHAPES}).json()["id"]
        yield int(url.rsplit(":", 1)[1]), key, sid, counting


def declare_only(port: int, path: str, key: str, content_type: str, length: int) -> tuple[int, dict]:
    """Send a step's header declaring `length` bytes and no body; the answer must come without the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: "
                     f"{content_type}\r\nContent-Length: {length}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)   # a timeout here (10 s) means the server waited for the body
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


@pytest.mark.parametrize("content_type, fmt", [(ST_TYPE["Content-Type"], wire.WireFormat.SAFETENSORS),
                                               ("application/json", wire.WireFormat.JSON)])
def test_a_declared_size_no_step_of_the_session_can_take_is_refused_unread(live, content_type, fmt):
    port, key, sid, counting = live
    most = wire.max_body_bytes({n: tuple(s) for n, s in SHAPES.items()}, fmt)
    status, body = declare_only(port, f"/v1/sessions/{sid}/step", key, content_type, most + 1)
    assert status == 413 and body["error"]["code"] == "payload_too_large", body
    assert "session's shapes" in body["error"]["message"] and str(most) in body["error"]["message"]
    assert counting.received[-1] == 0
    record("step_body:declared", fmt=fmt.value, limit=most, declared=most + 1, read=counting.received[-1])


def test_an_unknown_session_is_a_404_before_the_body_is_read(live):
    port, key, _, counting = live
    status, body = declare_only(port, "/v1/sessions/s_unknown/step", key, ST_TYPE["Content-Type"], STEP_LIMIT - 1)
    assert status == 404 and body["error"]["code"] == "session_not_found", body
    assert counting.received[-1] == 0


def test_a_chunked_step_is_cut_off_at_what_the_session_can_take(live):
    port, key, sid, counting = live
    most = wire.max_body_bytes({n: tuple(s) for n, s in SHAPES.items()}, wire.WireFormat.SAFETENSORS)
    status, body, sent = chunked_post(port, f"/v1/sessions/{sid}/step", {**bearer(key), **ST_TYPE})
    assert status == 413, body
    assert most < counting.received[-1] <= most + 256 * 1024, counting.received[-1]
    record("step_body:chunked", limit=most, read=counting.received[-1], sent=sent)
