"""The local admin key (<data dir>/admin.key, every scope) goes only to a server on this machine: a client
for any other host never reads it, never sends it, and says how to give it a key of its own."""

from __future__ import annotations

import httpx
import pytest

import client
from client import AsyncClient, Client

ADMIN = "l2o_local_admin_key_never_to_leave"


@pytest.fixture
def local_admin_key(tmp_path, monkeypatch):
    monkeypatch.delenv("L2O_API_KEY", raising=False)
    monkeypatch.delenv("L2O_URL", raising=False)
    monkeypatch.setenv("L2O_DATA_DIR", str(tmp_path))
    (tmp_path / "admin.key").write_text(ADMIN + "\n")


def recording_transport(seen: list[httpx.Request]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[])
    return httpx.MockTransport(answer)


@pytest.mark.parametrize("url", ["https://elsewhere", "http://elsewhere.example:8000", "http://10.0.0.7:8000",
                                 "http://127.0.0.1.evil.example", "http://[2001:db8::1]:8000", "http://0.0.0.0:8000"])
def test_a_client_for_another_host_never_sends_the_local_admin_key(local_admin_key, url):
    seen: list[httpx.Request] = []
    with pytest.raises(client.L2OError, match="only to a server on this machine"):
        Client(url, transport=recording_transport(seen))
    with pytest.raises(client.L2OError, match="only to a server on this machine"):
        AsyncClient(url)
    assert seen == []


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000",
                                 "http://127.0.0.2:9"])
def test_a_client_for_this_machine_uses_it(local_admin_key, url):
    seen: list[httpx.Request] = []
    with Client(url, transport=recording_transport(seen), max_retries=0) as c:
        c.request("GET", "/v1/optimizers")
    assert seen[0].headers["authorization"] == f"Bearer {ADMIN}"


def test_a_key_given_or_in_the_environment_goes_wherever_it_is_sent(local_admin_key, monkeypatch):
    seen: list[httpx.Request] = []
    with Client("https://elsewhere", api_key="l2o_given", transport=recording_transport(seen), max_retries=0) as c:
        c.request("GET", "/v1/optimizers")
    monkeypatch.setenv("L2O_API_KEY", "l2o_from_env")
    with Client("https://elsewhere", transport=recording_transport(seen), max_retries=0) as c:
        c.request("GET", "/v1/optimizers")
    assert [r.headers["authorization"] for r in seen] == ["Bearer l2o_given", "Bearer l2o_from_env"]
