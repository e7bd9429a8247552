"""The async client's HTTP/1.1, on asyncio streams: what Http11Transport (_http11.py) is to the blocking
client. httpx's async transport costs several milliseconds of Python per request on a small machine,
more than a step of a small model, and an AsyncClient driving many sessions spends its time there.

    request   the method, target and headers httpx built (or the client's own, for a binary step),
              then the body, in one write
    response  a Content-Length body, read whole before the call returns; a chunked or close-delimited
              one (the job event stream), read as the caller iterates

It serves http:// requests with a body in memory on an asyncio event loop; anything else (https, a
streamed request body, another async library such as trio) goes to httpx's own transport. Kept-alive
connections belong to the event loop that opened them. Errors are httpx's exceptions, so the client's
retry rules apply as they are.
"""

from __future__ import annotations

import asyncio
import socket
import weakref
from collections.abc import AsyncIterator

import httpx

from client._http11 import (
    MAX_CONNECTIONS_PER_HOST,
    MAX_HEAD_BYTES,
    READ_BYTES,
    Slot,
    _framing,
    _head,
    _keeps_alive,
    body_length,
    check_max_connections,
    is_final,
    parse_head,
    pool_timeout,
)

MAX_IDLE_PER_HOST = 100   # as httpx keeps: many sessions stepped concurrently reuse their connections
Connection = tuple[asyncio.AbstractEventLoop, asyncio.StreamReader, asyncio.StreamWriter]


class AsyncHttp11Transport(httpx.AsyncBaseTransport):
    def __init__(self, fallback: httpx.AsyncBaseTransport | None = None, *,
                 max_connections: int = MAX_CONNECTIONS_PER_HOST) -> None:
        self._fallback = fallback or httpx.AsyncHTTPTransport()
        self._max_connections = check_max_connections(max_connections)
        # Per event loop, as its connections are: a loop's semaphore cannot be awaited from another.
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, int], asyncio.Semaphore]] = (
            weakref.WeakKeyDictionary())
        self._idle: dict[tuple[str, int], list[Connection]] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http" or not isinstance(request.stream, httpx.ByteStream) or not _on_asyncio():
            return await self._fallback.handle_async_request(request)
        return await self._exchange((request.url.host, request.url.port or 80), _head(request), request.read(),
                                    request.extensions.get("timeout", {}), request)

    async def send_bytes(self, host: str, port: int, head: bytes, body: bytes,
                         timeouts: dict[str, float | None]) -> httpx.Response:
        """As Http11Transport.send_bytes: a request already written out, its answer with no request attached."""
        return await self._exchange((host, port), head, body, timeouts, None)

    async def _exchange(self, where: tuple[str, int], head: bytes, body: bytes,
                        timeouts: dict[str, float | None], request: httpx.Request | None) -> httpx.Response:
        slot = await self._take_slot(where, timeouts.get("pool"), request)
        try:
            return await self._exchange_holding(slot, where, head, body, timeouts, request)
        finally:
            if not slot.streamed:
                slot.give_back()

    async def _exchange_holding(self, slot: Slot, where: tuple[str, int], head: bytes, body: bytes,
                                timeouts: dict[str, float | None], request: httpx.Request | None) -> httpx.Response:
        _, reader, writer = conn = await self._checkout(where, request, timeouts.get("connect"))
        try:
            try:
                async with asyncio.timeout(timeouts.get("write")):
                    if len(body) <= READ_BYTES:
                        writer.write(head + body)   # one segment for a small request
                    else:
                        writer.write(head)
                        writer.write(body)
                    await writer.drain()
            except TimeoutError as exc:
                raise httpx.WriteTimeout(str(exc) or "timed out sending the request", request=request) from exc
            except OSError as exc:
                raise httpx.WriteError(str(exc), request=request) from exc
            read = timeouts.get("read")
            async with _Reading(request, read):
                status, headers = await _read_head(reader, request)
                framing = _framing(request, status, headers)
                if framing == "length":
                    content = await reader.readexactly(body_length(request, status, headers))
            if framing != "length":
                stream = (_Chunked if framing == "chunked" else _UntilClose)(reader, writer, request, read, slot)
                return httpx.Response(status, headers=headers, stream=stream, request=request)
            response = httpx.Response(status, headers=headers, content=content, request=request)
        except BaseException:
            writer.close()
            raise
        if _keeps_alive(headers) and not self._closed and len(self._idle.setdefault(where, [])) < MAX_IDLE_PER_HOST:
            self._idle[where].append(conn)
        else:
            writer.close()
        return response

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                _close(conn)
        await self._fallback.aclose()

    async def _take_slot(self, where: tuple[str, int], timeout: float | None, request: httpx.Request | None) -> Slot:
        per_loop = self._slots.setdefault(asyncio.get_running_loop(), {})
        semaphore = per_loop.get(where)
        if semaphore is None:
            semaphore = per_loop[where] = asyncio.Semaphore(self._max_connections)
        if semaphore.locked():   # only a wait needs its timeout
            try:
                async with asyncio.timeout(timeout):
                    await semaphore.acquire()
            except TimeoutError as exc:
                raise pool_timeout(where, timeout, self._max_connections, request) from exc
        else:
            await semaphore.acquire()
        return Slot(semaphore.release)

    async def _checkout(self, where: tuple[str, int], request: httpx.Request | None,
                        timeout: float | None) -> Connection:
        loop = asyncio.get_running_loop()
        idle = self._idle.get(where)
        while idle:
            conn = idle.pop()
            # Another event loop's connection cannot be used here; one the server closed while it was
            # idle (its keep-alive ran out) would lose the request.
            if conn[0] is loop and not conn[1].at_eof() and not conn[2].is_closing():
                return conn
            _close(conn)
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(*where, limit=MAX_HEAD_BYTES)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc) or "timed out connecting", request=request) from exc
        except OSError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return loop, reader, writer


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:   # another async library (trio) runs this coroutine
        return False
    return True


def _close(conn: Connection) -> None:
    try:
        conn[2].close()
    except RuntimeError:   # its event loop has ended, and took the socket with it
        pass


class _Reading:
    """Reads under the read timeout, with asyncio's errors as httpx's."""

    def __init__(self, request: httpx.Request | None, timeout: float | None) -> None:
        self.request, self.timeout = request, timeout

    async def __aenter__(self) -> None:
        self._timeout = asyncio.timeout(self.timeout)
        await self._timeout.__aenter__()

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            await self._timeout.__aexit__(kind, exc, tb)
        except TimeoutError as timeout:
            raise httpx.ReadTimeout(str(timeout) or "timed out reading the response",
                                    request=self.request) from timeout
        if isinstance(exc, asyncio.IncompleteReadError):
            raise httpx.RemoteProtocolError(
                f"the server closed the connection after {len(exc.partial)} of {exc.expected} bytes",
                request=self.request) from exc
        if isinstance(exc, asyncio.LimitOverrunError):
            raise httpx.RemoteProtocolError(f"a response line is over 64 KiB: {exc}", request=self.request) from exc
        if isinstance(exc, OSError):
            raise httpx.ReadError(str(exc), request=self.request) from exc


async def _read_head(reader: asyncio.StreamReader,
                     request: httpx.Request | None) -> tuple[int, list[tuple[bytes, bytes]]]:
    """The final answer's status and headers, skipping informational answers."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        status, headers = parse_head(head[:-4], request)
        if is_final(status):
            return status, headers


class _Chunked(httpx.AsyncByteStream):
    """A chunked body, read as the caller iterates (a job's event stream runs for as long as the job)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: httpx.Request | None,
                 timeout: float | None, slot: Slot) -> None:
        self.reader, self.writer, self.request, self.timeout, self.slot = reader, writer, request, timeout, slot
        slot.streamed = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            async with _Reading(self.request, self.timeout):
                size_field = (await self.reader.readuntil(b"\r\n"))[:-2].split(b";", 1)[0].strip()
                try:
                    size = int(size_field, 16)
                except ValueError as exc:
                    raise httpx.RemoteProtocolError(f"malformed chunk size {size_field[:20]!r}",
                                                    request=self.request) from exc
                if size == 0:
                    while await self.reader.readuntil(b"\r\n") != b"\r\n":   # trailers, up to the empty line
                        pass
                    return
                data = (await self.reader.readexactly(size + 2))[:-2]
            yield data

    async def aclose(self) -> None:
        self.writer.close()   # not reused: simpler than tracking whether the caller read to the end
        self.slot.give_back()


class _UntilClose(httpx.AsyncByteStream):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: httpx.Request | None,
                 timeout: float | None, slot: Slot) -> None:
        self.reader, self.writer, self.request, self.timeout, self.slot = reader, writer, request, timeout, slot
        slot.streamed = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            async with _Reading(self.request, self.timeout):
                chunk = await self.reader.read(READ_BYTES)
            if not chunk:
                return
            yield chunk

    async def aclose(self) -> None:
        self.writer.close()
        self.slot.give_back()
