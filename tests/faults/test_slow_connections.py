"""Slow and lying clients against a real `l2o serve`: connections that send half a header, and bodies that
declare 16 MiB and send one byte, are answered 408 and closed within the configured timeouts; the server's
memory (its current resident size, sampled while the attack runs) does not grow with what they declare;
and another client is served meanwhile."""

from __future__ import annotations

import contextlib
import socket
import time

import httpx
import pytest

from tests.record import record

pytestmark = pytest.mark.slow  # a real server process: a few seconds

HEADER_TIMEOUT_S, BODY_TIMEOUT_S = 1.0, 2.0
CONNECTIONS = 40
DECLARED = 16 * 2**20


def rss(pid: int) -> int:
    """The process's resident memory now (not a high-water mark), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def answers(socks: list[socket.socket], deadline: float, pid: int) -> tuple[list[bytes], list[float], int]:
    """Read every socket to its end (the server closes it), sampling the server's memory meanwhile:
    (what each got, when each closed, the most memory the server held while any was open)."""
    got, closed = [b""] * len(socks), [0.0] * len(socks)
    open_ = set(range(len(socks)))
    peak = rss(pid)
    began = time.monotonic()
    for s in socks:
        s.setblocking(False)
    while open_ and time.monotonic() < deadline:
        peak = max(peak, rss(pid))
        for i in list(open_):
            try:
                data = socks[i].recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                got[i] += data
            else:
                open_.discard(i)
                closed[i] = time.monotonic() - began
        time.sleep(0.02)   # a sampling interval, not a wait for an event: the loop ends on the events
    for i in open_:
        closed[i] = float("inf")
    return got, closed, peak


@pytest.fixture
def server(server_factory):
    with server_factory(header_timeout_s=str(HEADER_TIMEOUT_S), body_timeout_s=str(BODY_TIMEOUT_S),
                        register_pretrained="false") as served:
        yield served


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def test_half_a_header_is_answered_408_and_closed_within_the_header_timeout(server):
    socks = [connect(server.port) for _ in range(CONNECTIONS)]
    with contextlib.ExitStack() as stack:
        for s in socks:
            stack.enter_context(s)
            s.sendall(b"POST /v1/optimizers/x/versions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
        # Another client is served while they hang.
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
        got, closed, _ = answers(socks, time.monotonic() + HEADER_TIMEOUT_S + 10, server.proc.pid)
    assert all(g.startswith(b"HTTP/1.1 408") for g in got), {g[:40] for g in got}
    assert max(closed) < HEADER_TIMEOUT_S + 5, max(closed)
    record("slow:header", connections=CONNECTIONS, timeout_s=HEADER_TIMEOUT_S, closed_after_s=max(closed))


def test_a_declared_16_mib_body_with_one_byte_sent_holds_no_memory_and_is_closed(server):
    key = (server.log.parent / "data" / "admin.key").read_text().strip()
    before = rss(server.proc.pid)
    socks = [connect(server.port) for _ in range(CONNECTIONS)]
    with contextlib.ExitStack() as stack:
        for s in socks:
            stack.enter_context(s)
            s.sendall(f"POST /v1/optimizers/big/versions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}"
                      f"\r\nContent-Type: application/octet-stream\r\nContent-Length: {DECLARED}\r\n\r\n".encode()
                      + b"\x00")
        began = time.monotonic()
        r = httpx.get(f"{server.url}/v1/optimizers", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        other_ms = (time.monotonic() - began) * 1000
        assert r.status_code == 200
        got, closed, peak = answers(socks, time.monotonic() + BODY_TIMEOUT_S + 15, server.proc.pid)
    after = rss(server.proc.pid)
    assert all(g.startswith(b"HTTP/1.1 408") for g in got), {g[:40] for g in got}
    assert max(closed) < BODY_TIMEOUT_S + 5, max(closed)
    # 40 x 16 MiB declared: 640 MiB if the server believed them. It holds what arrived.
    assert peak - before < 64 * 2**20, f"the server's memory grew by {(peak - before) / 2**20:.0f} MiB"
    record("slow:body", connections=CONNECTIONS, declared=DECLARED, timeout_s=BODY_TIMEOUT_S,
           closed_after_s=max(closed), rss_before=before, rss_peak=peak, rss_after=after, other_ms=other_ms)
