"""The retry policy: what is repeated, how long the client waits, and the one case that matters most, a
step whose answer was lost, which must be applied once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
import torch

import client
from client import AsyncClient, Client, LocalOptimizer, RemoteOptimizer
from tests.client.conftest import BASE_URL, OPTIMIZER, LoseAnswers

SESSION = {"id": "s_1", "optimizer": {"name": "t", "version": 1, "reference": "t:1", "digest": "d"},
           "shapes": {"w": [1]}, "n_coords": 1, "step": 0}


def is_step(request: httpx.Request) -> bool:
    return request.method == "POST" and request.url.path.endswith("/step")


def test_a_step_whose_answer_was_lost_is_applied_once(http, make_key, l2o, ckpt):
    lose = LoseAnswers(http, is_step)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    twin = torch.nn.Linear(3, 2)
    twin.load_state_dict(model.state_dict())
    with Client(BASE_URL, make_key("optimize"), transport=lose) as flaky:
        remote = RemoteOptimizer(model.parameters(), optimizer=OPTIMIZER, client=flaky)
        local = LocalOptimizer(twin.parameters(), checkpoint=l2o.optimizers.download(OPTIMIZER))
        x = torch.randn(4, 3)
        for _ in range(2):
            for m, opt in ((model, remote), (twin, local)):
                opt.zero_grad()
                m(x).pow(2).sum().backward()
                opt.step()
        # The first step's answer was thrown away; the retry got the same bytes back, and the server applied
        # the step once: two steps counted, parameters as if nothing had gone wrong.
        [lost] = lose.lost
        replay = next(r for r in lose.delivered if r.request.url.path.endswith("/step"))
        assert replay.content == lost.content
        assert flaky.sessions.get(remote.session_id).step == 2 == remote.step_count
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters(), strict=True))


class Scripted(httpx.MockTransport):
    """Answers each request with the next of `answers` (a status, an exception, or a callable)."""

    def __init__(self, *answers: int | Exception | Callable[[httpx.Request], httpx.Response],
                 headers: dict[str, str] | None = None, body: dict | None = None) -> None:
        self.calls: list[httpx.Request] = []
        self.answers = list(answers)

        def handle(request: httpx.Request) -> httpx.Response:
            self.calls.append(request)
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            if callable(answer):
                return answer(request)
            if answer >= 400:
                return httpx.Response(answer, headers=headers or {}, json={
                    "error": {"code": {429: "rate_limited", 503: "service_unavailable", 500: "internal_error",
                                       404: "session_not_found"}.get(answer, "x"), "message": f"status {answer}",
                              "detail": None}})
            return httpx.Response(answer, json=body if body is not None else [])

        super().__init__(handle)


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr("client._client.time.sleep", slept.append)
    return slept


def make(transport: httpx.MockTransport, **kwargs) -> Client:
    return Client(BASE_URL, "key", transport=transport, **kwargs)


def test_429_is_retried_after_retry_after_even_for_a_post(sleeps):
    t = Scripted(429, 201, headers={"Retry-After": "2"}, body=SESSION)
    session = make(t).sessions.create("t", {"w": [1]})
    assert session.id == "s_1" and len(t.calls) == 2 and sleeps == [2.0]


def test_a_retry_after_beyond_the_cap_is_the_callers_to_decide(sleeps):
    t = Scripted(429, headers={"Retry-After": "3600"})
    with pytest.raises(client.RateLimitError) as info:
        make(t).optimizers.list()
    assert info.value.status_code == 429 and len(t.calls) == 1 and sleeps == []


def test_too_many_sessions_is_not_retried_since_waiting_frees_none(sleeps):
    refused = httpx.Response(429, json={"error": {"code": "too_many_sessions", "message": "this key already holds "
                                                  "16 sessions", "detail": {"sessions": 16, "limit": 16}}})
    t = Scripted(lambda request: refused, 201, body=SESSION)
    with pytest.raises(client.TooManySessionsError, match="already holds 16 sessions"):
        make(t).sessions.create("t", {"w": [1]})
    assert len(t.calls) == 1 and sleeps == []


def test_5xx_is_retried_for_reads_and_steps_with_backoff(sleeps):
    t = Scripted(503, 500, 200)
    assert make(t).optimizers.list() == [] and len(t.calls) == 3
    assert len(sleeps) == 2 and 0 < sleeps[0] < sleeps[1]  # exponential backoff

    step_answer = httpx.Response(200, json={"step": 1, "updates": {"w": [0.5]}})
    t = Scripted(502, lambda request: step_answer)
    result = make(t).sessions.step("s_1", step=0, grads={"w": np.zeros(1, np.float32)})
    assert result.step == 1 and result.updates["w"].tolist() == [0.5] and len(t.calls) == 2
    assert t.calls[0].content == t.calls[1].content  # the retry sends the same step, the same bytes


def test_a_non_idempotent_post_is_not_retried_after_5xx_or_a_lost_answer(sleeps):
    t = Scripted(503, 201)
    with pytest.raises(client.ServiceUnavailableError):
        make(t).jobs.submit(name="j")
    assert len(t.calls) == 1
    t = Scripted(httpx.ReadError("reset"), 201)
    with pytest.raises(client.APIConnectionError):
        make(t).sessions.create("t", {"w": [1]})
    assert len(t.calls) == 1 and sleeps == []


def test_a_post_that_never_reached_the_server_is_retried(sleeps):
    t = Scripted(httpx.ConnectError("refused"), 201, body=SESSION)
    assert make(t).sessions.create("t", {"w": [1]}).id == "s_1" and len(t.calls) == 2


def test_retries_stop_at_max_retries(sleeps):
    t = Scripted(503, 503, 503, 503)
    with pytest.raises(client.ServiceUnavailableError):
        make(t, max_retries=2).optimizers.list()
    assert len(t.calls) == 3
    t = Scripted(httpx.ReadTimeout("slow"))
    with pytest.raises(client.APITimeoutError):
        make(t, max_retries=0).optimizers.list()


def test_a_retried_delete_that_finds_nothing_succeeded(sleeps):
    t = Scripted(httpx.ReadError("reset"), 404)
    make(t).sessions.delete("s_1")
    assert [r.method for r in t.calls] == ["DELETE", "DELETE"]
    t = Scripted(404)
    with pytest.raises(client.SessionNotFoundError):
        make(t).sessions.delete("s_1")  # a first attempt's 404 is an error


def test_an_unknown_code_falls_back_to_its_status_and_a_proxy_page_still_raises(sleeps):
    t = Scripted(lambda r: httpx.Response(409, json={"error": {"code": "brand_new", "message": "m"}}))
    with pytest.raises(client.ConflictError) as info:
        make(t).optimizers.list()
    assert info.value.code == "brand_new" and info.value.message == "m"
    t = Scripted(lambda r: httpx.Response(404, text="<html>no</html>"))
    with pytest.raises(client.NotFoundError, match="no"):
        make(t).optimizers.list()


class SlowList(BaseHTTPRequestHandler):
    """Answers every GET with an empty list after 50 ms, over kept-alive HTTP/1.1, noting each connection."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.server.peers.add(self.client_address)
        time.sleep(0.05)   # the behaviour under test: a slow answer, so that the calls overlap and queue
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"[]")

    def log_message(self, *args) -> None:
        pass


def test_connections_are_capped_at_max_connections_and_kept_alive():
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowList)
    server.peers = set()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Client(f"http://127.0.0.1:{server.server_port}", "key", max_connections=3) as c:
            with ThreadPoolExecutor(12) as pool:
                assert list(pool.map(lambda _: c.optimizers.list(), range(24))) == [[]] * 24
            c.optimizers.list()
    finally:
        server.shutdown()
        server.server_close()
    assert 1 <= len(server.peers) <= 3   # 25 calls, each waiting for one of three connections kept open


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "3"])
def test_a_bad_max_connections_is_refused_even_with_a_transport_given(bad):
    for make_client in (Client, AsyncClient):
        with pytest.raises(ValueError, match="max_connections"):
            make_client(BASE_URL, "key", max_connections=bad)
        with pytest.raises(ValueError, match="max_connections"):
            make_client(BASE_URL, "key", max_connections=bad, transport=httpx.MockTransport(lambda r: None))
