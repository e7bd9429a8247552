"""Http11Transport, the blocking client's HTTP/1.1, against a small server on 127.0.0.1 that answers each
framing HTTP/1.1 allows and misbehaves as servers do (closing kept-alive sockets, stalling)."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from client._http11 import Http11Transport


class RawServer:
    """Answers by path: /echo (Content-Length, the request body back), /slow (the same after 50 ms),
    /chunked, /until-close, /drop (answers, then closes the socket without saying so), /stall (never
    answers)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        data = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, data = data.partition(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                path = lines[0].split(b" ")[1]
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in lines[1:])}
                size = int(headers.get(b"content-length", b"0"))
                while len(data) < size:
                    data += conn.recv(65536)
                body, data = data[:size], data[size:]
                if path == b"/slow":
                    time.sleep(0.05)
                if path in (b"/echo", b"/slow"):
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nx-method: %s\r\n\r\n%s"
                                 % (len(body), lines[0].split(b" ")[0], body))
                elif path == b"/chunked":
                    conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                                 b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\n\r\n")
                elif path == b"/until-close":
                    conn.sendall(b"HTTP/1.1 200 OK\r\n\r\nall of it")
                    return
                elif path == b"/drop":
                    conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
                    return
                elif path == b"/stall":
                    time.sleep(2)
                    return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server():
    s = RawServer()
    yield s
    s.close()


@pytest.fixture
def http():
    with httpx.Client(transport=Http11Transport(), timeout=5) as c:
        yield c


def test_bodies_of_every_size_come_back_whole_over_one_kept_alive_connection(server, http):
    for size in (0, 10, 70_000, 3_000_000):
        body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        r = http.post(f"{server.url}/echo", content=body)
        assert r.status_code == 200 and r.content == body and r.headers["x-method"] == "POST"
    assert http.get(f"{server.url}/echo").content == b""
    assert server.connections == 1


def test_chunked_and_close_delimited_bodies_are_read_as_they_come(server, http):
    assert http.get(f"{server.url}/chunked").text == "hello world"
    with http.stream("GET", f"{server.url}/chunked") as r:
        assert list(r.iter_raw()) == [b"hello", b" ", b"world"]
    assert http.get(f"{server.url}/until-close").text == "all of it"


def test_a_connection_the_server_closed_while_idle_is_not_reused(server, http):
    assert http.get(f"{server.url}/drop").status_code == 204
    time.sleep(0.1)   # the server's close reaches the client's socket
    assert http.post(f"{server.url}/echo", content=b"after").content == b"after"
    assert server.connections == 2


def test_failures_are_httpx_errors(server, http):
    with pytest.raises(httpx.ReadTimeout):
        http.get(f"{server.url}/stall", timeout=httpx.Timeout(5, read=0.2))
    server.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        http.get(f"http://127.0.0.1:{free}/echo")


def test_connections_to_a_host_are_capped_and_requests_beyond_the_cap_wait_for_one(server):
    with httpx.Client(transport=Http11Transport(max_connections=3), timeout=5) as c:
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda i: c.post(f"{server.url}/slow", content=b"%d" % i).content, range(12)))
    assert answers == [b"%d" % i for i in range(12)]
    assert server.connections == 3   # the nine that waited each took a connection another had finished with


def test_a_request_that_finds_no_free_connection_within_its_pool_timeout_fails_as_httpx_does(server):
    with httpx.Client(transport=Http11Transport(max_connections=1), timeout=5) as c:
        with c.stream("GET", f"{server.url}/chunked") as r:   # an open stream holds its connection
            with pytest.raises(httpx.PoolTimeout, match="at most 1 at once"):
                c.get(f"{server.url}/echo", timeout=httpx.Timeout(5, pool=0.2))
            assert r.read() == b"hello world"
        assert c.get(f"{server.url}/echo").status_code == 200   # closing the stream gave it back
    with pytest.raises(ValueError, match="max_connections"):
        Http11Transport(max_connections=0)


def test_other_requests_go_to_httpx_own_transport(server):
    seen = []

    class Recorder(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(request.url.scheme)
            return httpx.Response(200, content=b"fallback")

    with httpx.Client(transport=Http11Transport(fallback=Recorder())) as c:
        assert c.get("https://example.invalid/").content == b"fallback"
        streamed = c.post(f"{server.url}/echo", content=iter([b"a", b"b"]))   # a body given as a stream
        assert streamed.content == b"fallback"
    assert seen == ["https", "http"]


def test_the_client_uses_it_unless_the_environment_names_a_proxy(monkeypatch):
    from client import Client

    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    with Client("http://127.0.0.1:9", "l2o_k", max_connections=5) as c:
        assert c._lean is not None and c._lean._max_connections == 5
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    with pytest.raises(ValueError, match="max_connections"):
        Client("http://10.1.2.3:9", "l2o_k", max_connections=0)   # a proxied client checks it too
    with Client("http://10.1.2.3:9", "l2o_k") as c:
        # httpx's own client, which sends that URL through its proxy transport
        assert c._lean is None and c._http._transport_for_url(httpx.URL("http://10.1.2.3:9")) is not c._http._transport
    monkeypatch.setenv("NO_PROXY", "10.1.2.3")
    with Client("http://10.1.2.3:9", "l2o_k") as c:
        assert c._lean is not None
