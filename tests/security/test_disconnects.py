"""A client that hangs up mid-request is expected: the server logs one WARNING line for it, never an ERROR
or a traceback, and goes on serving."""

from __future__ import annotations

import logging
import socket
import time

import httpx

from service.app import create_app
from service.registry import keys
from tests.live_server import ServerThread
from tests.record import record
from tests.security.conftest import make_settings


def test_an_aborted_upload_logs_one_warning_line_and_no_traceback(tmp_path, sqlite_migrated, caplog):
    app = create_app(make_settings(tmp_path, sqlite_migrated))
    with ServerThread(app) as url:
        with app.state.db.session() as s:
            _, admin = keys.create_key(s, "admin", ["admin"])
            s.commit()
        caplog.clear()
        caplog.set_level(logging.INFO)
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(("POST /v1/optimizers/big/versions HTTP/1.1\r\nHost: x\r\n"
                          f"Authorization: Bearer {admin}\r\nContent-Type: application/octet-stream\r\n"
                          "Content-Length: 500000\r\n\r\n").encode() + b"\x00" * 1000)
        deadline = time.monotonic() + 10
        while not any("disconnected" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"{url}/healthz").status_code == 200
    app_records = [r for r in caplog.records if r.name.startswith(("service", "uvicorn.error"))]
    assert [r.levelno for r in app_records if r.levelno >= logging.WARNING] == [logging.WARNING], \
        [(r.name, r.levelname, r.getMessage()) for r in app_records]
    warning = next(r for r in app_records if r.levelno == logging.WARNING)
    assert "disconnected" in warning.getMessage() and "/v1/optimizers/big/versions" in warning.getMessage()
    assert warning.exc_info is None and "\n" not in warning.getMessage()
    assert not any(r.exc_info for r in caplog.records)
    record("disconnect:upload", warnings=1, errors=0)
