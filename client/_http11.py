"""The blocking client's HTTP/1.1: kept-alive sockets, and each response body read into one buffer.

httpx's own transport reads a response in 64 KiB pieces, each parsed by h11 and copied on its way,
and costs about a millisecond of Python per request on a small machine: for a remote step that is
more than the step itself. This transport speaks the plain HTTP/1.1 an l2o server answers with:

    request   the method, target and headers httpx built, then the body httpx holds (bytes)
    response  a Content-Length body, read straight into one buffer before handle_request returns;
              a chunked or close-delimited one (the job event stream), read as the caller iterates

It serves http:// requests with a body in memory; anything else (https, a streamed request body)
goes to httpx's own transport. Errors are httpx's exceptions, so the client's retry rules apply as
they are.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable, Iterable, Iterator

import httpx

MAX_HEAD_BYTES = 64 * 1024
MAX_IDLE_PER_HOST = 8
# As httpx's pool: a burst of threads on one client waits for a connection instead of opening one each.
MAX_CONNECTIONS_PER_HOST = 100
READ_BYTES = 256 * 1024
NO_BODY_STATUSES = frozenset({204, 304})


class Http11Transport(httpx.BaseTransport):
    def __init__(self, fallback: httpx.BaseTransport | None = None, *,
                 max_connections: int = MAX_CONNECTIONS_PER_HOST) -> None:
        self._fallback = fallback or httpx.HTTPTransport()
        self._max_connections = check_max_connections(max_connections)
        self._slots: dict[tuple[str, int], threading.BoundedSemaphore] = {}
        self._idle: dict[tuple[str, int], list[socket.socket]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http" or not isinstance(request.stream, httpx.ByteStream):
            return self._fallback.handle_request(request)
        return self._exchange((request.url.host, request.url.port or 80), _head(request), request.read(),
                              request.extensions.get("timeout", {}), request)

    def send_bytes(self, host: str, port: int, head: bytes, body: bytes,
                   timeouts: dict[str, float | None]) -> httpx.Response:
        """One request already written out (`head`: the request line and headers, through the blank
        line), for a caller that skips building an httpx.Request: its answer, with no request attached,
        and httpx's exceptions, with none either."""
        return self._exchange((host, port), head, body, timeouts, None)

    def _exchange(self, where: tuple[str, int], head: bytes, body: bytes, timeouts: dict[str, float | None],
                  request: httpx.Request | None) -> httpx.Response:
        slot = self._take_slot(where, timeouts.get("pool"), request)
        try:
            sock = self._checkout(where, request, timeouts.get("connect"))
            try:
                _send(sock, head, body, timeouts.get("write"), request)
                sock.settimeout(timeouts.get("read"))
                status, headers, rest = _read_head(sock, request)
                framing = _framing(request, status, headers)
                if framing != "length":
                    stream = (_ChunkedStream if framing == "chunked" else _UntilClose)(sock, rest, request, slot)
                    return httpx.Response(status, headers=headers, stream=stream, request=request)
                content = _read_exactly(sock, body_length(request, status, headers), rest, request)
                response = httpx.Response(status, headers=headers, content=content, request=request)
            except BaseException:
                sock.close()
                raise
            if _keeps_alive(headers):
                self._checkin(where, sock)
            else:
                sock.close()
            return response
        finally:
            if not slot.streamed:
                slot.give_back()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for socks in idle.values():
            for sock in socks:
                sock.close()
        self._fallback.close()

    # --- connections ------------------------------------------------------------------------------------

    def _take_slot(self, where: tuple[str, int], timeout: float | None, request: httpx.Request | None) -> Slot:
        with self._lock:
            semaphore = self._slots.get(where)
            if semaphore is None:
                semaphore = self._slots[where] = threading.BoundedSemaphore(self._max_connections)
        if not semaphore.acquire(timeout=timeout):
            raise pool_timeout(where, timeout, self._max_connections, request)
        return Slot(semaphore.release)

    def _checkout(self, where: tuple[str, int], request: httpx.Request | None, timeout: float | None) -> socket.socket:
        while True:
            with self._lock:
                idle = self._idle.get(where)
                sock = idle.pop() if idle else None
            if sock is None:
                break
            # An idle socket with something to read has been closed by the server (its keep-alive ran
            # out): sending on it would lose the request.
            if not select.select([sock], [], [], 0)[0]:
                return sock
            sock.close()
        try:
            sock = socket.create_connection(where, timeout=timeout)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc), request=request) from exc
        except OSError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _checkin(self, where: tuple[str, int], sock: socket.socket) -> None:
        with self._lock:
            idle = self._idle.setdefault(where, [])
            if not self._closed and len(idle) < MAX_IDLE_PER_HOST:
                idle.append(sock)
                return
        sock.close()


class Slot:
    """One of a host's connections in use. It is given back once: when the answer has been read, or, for
    an answer read as the caller iterates, when that stream is closed."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release
        self.streamed = False   # a stream holds it, and gives it back when closed

    def give_back(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


def check_max_connections(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"max_connections must be a whole number of at least 1, got {n!r}")
    return n


def pool_timeout(where: tuple[str, int], timeout: float | None, limit: int,
                 request: httpx.Request | None) -> httpx.PoolTimeout:
    return httpx.PoolTimeout(f"no connection to {where[0]}:{where[1]} came free within {timeout} s "
                             f"(at most {limit} at once)", request=request)


def request_head(method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The request line and headers, through the blank line that ends them."""
    return b"".join([b"%s %s HTTP/1.1\r\n" % (method, target),
                     *(b"%s: %s\r\n" % (name, value) for name, value in headers), b"\r\n"])


def _head(request: httpx.Request) -> bytes:
    return request_head(request.method.encode(), request.url.raw_path, request.headers.raw)


def _send(sock: socket.socket, head: bytes, body: bytes, timeout: float | None, request: httpx.Request | None) -> None:
    sock.settimeout(timeout)
    try:
        if len(body) <= READ_BYTES:
            sock.sendall(head + body)   # one segment for a small request
        else:
            sock.sendall(head)
            sock.sendall(body)
    except TimeoutError as exc:
        raise httpx.WriteTimeout(str(exc), request=request) from exc
    except OSError as exc:
        raise httpx.WriteError(str(exc), request=request) from exc


def _recv(sock: socket.socket, request: httpx.Request | None) -> bytes:
    try:
        return sock.recv(READ_BYTES)
    except TimeoutError as exc:
        raise httpx.ReadTimeout(str(exc), request=request) from exc
    except OSError as exc:
        raise httpx.ReadError(str(exc), request=request) from exc


def _read_head(sock: socket.socket, request: httpx.Request | None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """(status, headers, the body bytes that came with the head), skipping informational answers."""
    data = b""
    while True:
        end = data.find(b"\r\n\r\n")
        while end < 0:
            if len(data) > MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError("the response head is over 64 KiB", request=request)
            chunk = _recv(sock, request)
            if not chunk:
                raise httpx.RemoteProtocolError("the server closed the connection without answering",
                                                request=request)
            data += chunk
            end = data.find(b"\r\n\r\n")
        status, headers = parse_head(data[:end], request)
        data = data[end + 4:]
        if is_final(status):
            return status, headers, data


def parse_head(head: bytes, request: httpx.Request | None) -> tuple[int, list[tuple[bytes, bytes]]]:
    """The status and headers of a response head (up to, not including, its blank line)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise httpx.RemoteProtocolError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}", request=request)
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise httpx.RemoteProtocolError(f"malformed header line {line[:80]!r}", request=request)
        headers.append((name.strip(), value.strip()))
    return int(parts[1]), headers


def is_final(status: int) -> bool:
    """Not an informational answer (100 Continue and the like), which a final one follows."""
    return status >= 200 or status == 101


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _framing(request: httpx.Request | None, status: int, headers: list[tuple[bytes, bytes]]) -> str:
    if request is not None and request.method == "HEAD" or status in NO_BODY_STATUSES:
        return "length"
    encoding = _header(headers, b"transfer-encoding")
    if encoding is not None:
        if encoding.lower() != b"chunked":
            raise httpx.RemoteProtocolError(f"unsupported Transfer-Encoding {encoding!r}", request=request)
        return "chunked"
    length = _header(headers, b"content-length")
    if length is not None:
        if not length.isdigit():
            raise httpx.RemoteProtocolError(f"malformed Content-Length {length!r}", request=request)
        return "length"
    return "close"


def body_length(request: httpx.Request | None, status: int, headers: list[tuple[bytes, bytes]]) -> int:
    """The bytes of a Content-Length framed body: none for a HEAD request or a 204 or 304 answer."""
    if request is not None and request.method == "HEAD" or status in NO_BODY_STATUSES:
        return 0
    return int(_header(headers, b"content-length") or 0)


def _keeps_alive(headers: list[tuple[bytes, bytes]]) -> bool:
    return (_header(headers, b"connection") or b"").lower() != b"close"


def _read_exactly(sock: socket.socket, n: int, rest: bytes, request: httpx.Request | None) -> bytes:
    """n body bytes: those that came with the head, then the socket's, received straight into place."""
    if len(rest) >= n:
        return rest[:n]
    body = bytearray(n)
    view = memoryview(body)
    view[:len(rest)] = rest
    got = len(rest)
    while got < n:
        try:
            k = sock.recv_into(view[got:], n - got)
        except TimeoutError as exc:
            raise httpx.ReadTimeout(str(exc), request=request) from exc
        except OSError as exc:
            raise httpx.ReadError(str(exc), request=request) from exc
        if not k:
            raise httpx.RemoteProtocolError(f"the server closed the connection after {got} of {n} body bytes",
                                            request=request)
        got += k
    return bytes(body)   # httpx keeps a response's content as bytes; this is the only copy


class _ChunkedStream(httpx.SyncByteStream):
    """A chunked body, read as the caller iterates (a job's event stream runs for as long as the job)."""

    def __init__(self, sock: socket.socket, rest: bytes, request: httpx.Request | None, slot: Slot) -> None:
        self.sock, self.buffer, self.request, self.slot = sock, rest, request, slot
        slot.streamed = True

    def _fill(self) -> None:
        chunk = _recv(self.sock, self.request)
        if not chunk:
            raise httpx.RemoteProtocolError("the server closed the connection inside a chunked body",
                                            request=self.request)
        self.buffer += chunk

    def _line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError("a chunk size line is over 64 KiB", request=self.request)
            self._fill()
        line, self.buffer = self.buffer[:end], self.buffer[end + 2:]
        return line

    def __iter__(self) -> Iterator[bytes]:
        while True:
            size_field = self._line().split(b";", 1)[0].strip()
            try:
                size = int(size_field, 16)
            except ValueError as exc:
                raise httpx.RemoteProtocolError(f"malformed chunk size {size_field[:20]!r}",
                                                request=self.request) from exc
            if size == 0:
                while self._line():   # trailers, up to the empty line
                    pass
                return
            while len(self.buffer) < size + 2:
                self._fill()
            data, self.buffer = self.buffer[:size], self.buffer[size + 2:]
            yield data

    def close(self) -> None:
        self.sock.close()   # not reused: simpler than tracking whether the caller read to the end
        self.slot.give_back()


class _UntilClose(httpx.SyncByteStream):
    def __init__(self, sock: socket.socket, rest: bytes, request: httpx.Request | None, slot: Slot) -> None:
        self.sock, self.rest, self.request, self.slot = sock, rest, request, slot
        slot.streamed = True

    def __iter__(self) -> Iterator[bytes]:
        if self.rest:
            yield self.rest
        while chunk := _recv(self.sock, self.request):
            yield chunk

    def close(self) -> None:
        self.sock.close()
        self.slot.give_back()
