"""Bodies over the limit are refused with 413 before they are read whole: with a Content-Length that says
so, and with a chunked body that never says how long it is (the server must stop reading at the limit)."""

from __future__ import annotations

import json
import select
import socket
import time

import pytest

from service.app import create_app
from tests.live_server import ServerThread
from tests.record import record
from tests.security.conftest import OCTET_TYPE, bearer, make_settings

CHUNK = 64 * 1024
HUGE = 1024 * 2**20  # what the hostile client offers to send: 1 GiB


class CountingApp:
    """Wraps the app to count the body bytes it actually received, request by request."""

    def __init__(self, app) -> None:
        self.app = app
        self.received: list[int] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.received.append(0)
        index = len(self.received) - 1

        async def counting_receive():
            message = await receive()
            self.received[index] += len(message.get("body", b""))
            return message

        await self.app(scope, counting_receive, send)


def chunked_post(port: int, path: str, headers: dict[str, str], total: int = HUGE,
                 timeout: float = 20.0) -> tuple[int, dict, int]:
    """POST an endless-looking chunked body, stopping once the server answers; (status, body, bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHUNK)  # keep what the kernel buffers for us small
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Transfer-Encoding: chunked",
             *(f"{k}: {v}" for k, v in headers.items())]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    chunk = f"{CHUNK:x}\r\n".encode() + b"\x00" * CHUNK + b"\r\n"
    sent, deadline = 0, time.monotonic() + timeout
    try:
        while sent < total and time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock], [], 1.0)
            if readable:
                break  # the answer came: stop sending
            if writable:
                sock.sendall(chunk)
                sent += CHUNK
    except OSError:
        pass  # the server closed the connection on a body it will not read
    response = b""
    try:
        while b"\r\n\r\n" not in response or len(response) < _expected_length(response):
            data = sock.recv(65536)
            if not data:
                break
            response += data
    except OSError:
        pass
    finally:
        sock.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head, f"no answer after sending {sent} bytes"
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body[:_expected_length(response) - len(head) - 4] or b"{}"), sent


def _expected_length(response: bytes) -> int:
    head, sep, _ = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + len(sep) + int(value)
    return len(response) + 1


@pytest.fixture
def live(tmp_path, sqlite_migrated):
    """The app over real HTTP on 127.0.0.1 with small limits, and its admin key."""
    from service.registry import keys

    settings = make_settings(tmp_path, sqlite_migrated, max_body_bytes=64 * 1024, step_max_body_bytes=2**20,
                             max_upload_bytes=2**20)
    app = create_app(settings)
    counting = CountingApp(app)
    with ServerThread(counting) as url:
        with app.state.db.session() as s:
            _, key = keys.create_key(s, "admin", ["admin", "optimize", "train"])
            s.commit()
        yield url, counting, bearer(key), settings


@pytest.mark.parametrize("path, content_type, setting", [
    ("/v1/jobs", "application/json", "L2O_MAX_BODY_BYTES"),
    ("/v1/keys", "application/json", "L2O_MAX_BODY_BYTES"),
    ("/v1/sessions", "application/json", "L2O_STEP_MAX_BODY_BYTES"),
    ("/v1/optimizers/big/versions", OCTET_TYPE["Content-Type"], "L2O_MAX_UPLOAD_BYTES"),
])
def test_a_chunked_body_is_cut_off_at_the_limit(live, path, content_type, setting):
    url, counting, headers, settings = live
    limit = {"L2O_MAX_BODY_BYTES": settings.max_body_bytes, "L2O_STEP_MAX_BODY_BYTES": settings.step_max_body_bytes,
             "L2O_MAX_UPLOAD_BYTES": settings.max_upload_bytes}[setting]
    port = int(url.rsplit(":", 1)[1])
    status, body, sent = chunked_post(port, path, {**headers, "Content-Type": content_type})
    assert status == 413, body
    assert body["error"]["code"] == "payload_too_large" and setting in body["error"]["message"], body
    # The app read the limit and at most one more network read (asyncio reads up to 256 KiB at a time); the
    # client never had to send its gigabyte.
    assert limit < counting.received[-1] <= limit + 256 * 1024, counting.received[-1]
    assert sent < HUGE // 8, sent
    record("body_limit", path=path, limit=limit, read=counting.received[-1], sent=sent, offered=HUGE)


@pytest.mark.parametrize("path, method", [("/v1/jobs", "POST"), ("/v1/keys", "POST"),
                                          ("/v1/optimizers/x/aliases/prod", "PUT")])
def test_a_declared_length_over_the_limit_is_refused_unread(client, admin_headers, path, method):
    body = json.dumps({"name": "x" * 20_000, "scopes": ["admin"], "version": 1}).encode()
    response = client.request(method, path, content=body, headers={**admin_headers, "Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "payload_too_large" and "L2O_MAX_BODY_BYTES" in error["message"]
    assert len(client.get("/v1/keys", headers=admin_headers).json()) == 1  # only the admin key
    assert client.get("/v1/jobs", headers=admin_headers).json() == []


def test_bodies_under_the_limit_still_work(client, admin_headers):
    response = client.post("/v1/keys", json={"name": "k" * 100, "scopes": ["optimize"]}, headers=admin_headers)
    assert response.status_code == 201, response.text
