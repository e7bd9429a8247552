"""AsyncHttp11Transport, the AsyncClient's HTTP/1.1, against the same small misbehaving server as the
blocking transport (test_http11.RawServer)."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from client._http11_async import AsyncHttp11Transport
from tests.client.test_http11 import RawServer


@pytest.fixture
def server():
    s = RawServer()
    yield s
    s.close()


@pytest.fixture
async def http():
    async with httpx.AsyncClient(transport=AsyncHttp11Transport(), timeout=5) as c:
        yield c


async def test_bodies_of_every_size_come_back_whole_over_one_kept_alive_connection(server, http):
    for size in (0, 10, 70_000, 3_000_000):
        body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        r = await http.post(f"{server.url}/echo", content=body)
        assert r.status_code == 200 and r.content == body and r.headers["x-method"] == "POST"
    assert (await http.get(f"{server.url}/echo")).content == b""
    assert server.connections == 1


async def test_concurrent_requests_each_get_their_own_answer_and_connections_are_kept(server, http):
    bodies = [b"%d" % i * (i + 1) for i in range(20)]
    for _ in range(2):
        answers = await asyncio.gather(*(http.post(f"{server.url}/echo", content=b) for b in bodies))
        assert [a.content for a in answers] == bodies
    assert server.connections == 20   # the second round reused the first round's connections


async def test_connections_to_a_host_are_capped_and_requests_beyond_the_cap_wait_for_one(server):
    async with httpx.AsyncClient(transport=AsyncHttp11Transport(max_connections=3), timeout=5) as c:
        answers = await asyncio.gather(*(c.post(f"{server.url}/slow", content=b"%d" % i) for i in range(12)))
    assert [a.content for a in answers] == [b"%d" % i for i in range(12)]
    assert server.connections == 3   # the nine that waited each took a connection another had finished with


async def test_a_request_that_finds_no_free_connection_within_its_pool_timeout_fails_as_httpx_does(server):
    async with httpx.AsyncClient(transport=AsyncHttp11Transport(max_connections=1), timeout=5) as c:
        async with c.stream("GET", f"{server.url}/chunked") as r:   # an open stream holds its connection
            with pytest.raises(httpx.PoolTimeout, match="at most 1 at once"):
                await c.get(f"{server.url}/echo", timeout=httpx.Timeout(5, pool=0.2))
            assert await r.aread() == b"hello world"
        assert (await c.get(f"{server.url}/echo")).status_code == 200   # closing the stream gave it back
    with pytest.raises(ValueError, match="max_connections"):
        AsyncHttp11Transport(max_connections=0)


async def test_chunked_and_close_delimited_bodies_are_read_as_they_come(server, http):
    assert (await http.get(f"{server.url}/chunked")).text == "hello world"
    async with http.stream("GET", f"{server.url}/chunked") as r:
        assert [chunk async for chunk in r.aiter_raw()] == [b"hello", b" ", b"world"]
    assert (await http.get(f"{server.url}/until-close")).text == "all of it"


async def test_a_connection_the_server_closed_while_idle_is_not_reused(server, http):
    assert (await http.get(f"{server.url}/drop")).status_code == 204
    await asyncio.sleep(0.1)   # the server's close reaches the client's socket
    assert (await http.post(f"{server.url}/echo", content=b"after")).content == b"after"
    assert server.connections == 2


async def test_failures_are_httpx_errors(server, http):
    with pytest.raises(httpx.ReadTimeout):
        await http.get(f"{server.url}/stall", timeout=httpx.Timeout(5, read=0.2))
    server.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        await http.get(f"http://127.0.0.1:{free}/echo")


async def test_a_body_cut_short_is_a_protocol_error(http):
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with listener:
        with pytest.raises(httpx.RemoteProtocolError, match="after 9 of 100 bytes"):
            await http.get(f"http://127.0.0.1:{port}/")


async def test_other_requests_go_to_httpx_own_transport(server):
    seen = []

    class Recorder(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(request.url.scheme)
            return httpx.Response(200, content=b"fallback")

    async def parts():
        yield b"a"
        yield b"b"

    async with httpx.AsyncClient(transport=AsyncHttp11Transport(fallback=Recorder())) as c:
        assert (await c.get("https://example.invalid/")).content == b"fallback"
        streamed = await c.post(f"{server.url}/echo", content=parts())   # a body given as a stream
        assert streamed.content == b"fallback"
    assert seen == ["https", "http"]


def test_connections_do_not_outlive_their_event_loop(server):
    transport = AsyncHttp11Transport()
    port = int(server.url.rsplit(":", 1)[1])

    async def call() -> bytes:
        head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n"
        return (await transport.send_bytes("127.0.0.1", port, head, b"y", {})).content

    # Each asyncio.run is a new event loop: the connection the last one kept is dropped, not used.
    assert [asyncio.run(call()) for _ in range(3)] == [b"y"] * 3
    assert server.connections == 3


async def test_the_async_client_uses_it_unless_the_environment_names_a_proxy(monkeypatch):
    from client import AsyncClient

    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    async with AsyncClient("http://127.0.0.1:9", "l2o_k", max_connections=5) as c:
        assert c._lean is not None and c._lean._max_connections == 5
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    with pytest.raises(ValueError, match="max_connections"):
        AsyncClient("http://10.1.2.3:9", "l2o_k", max_connections=0)   # a proxied client checks it too
    async with AsyncClient("http://10.1.2.3:9", "l2o_k") as c:
        assert c._lean is None
