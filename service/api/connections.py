"""Connections that cannot be held open for free: a request's header must arrive in full within
L2O_HEADER_TIMEOUT_S of its first byte, else the server answers 408 and closes the connection.

uvicorn times out only idle keep-alive connections: a connection that opens and sends half a header is
held for ever (issue 20: thousands of such connections cost the client nothing). This is uvicorn's own
HTTP protocol with one timer added; the body's pace is bounded by BodyLimitMiddleware (service/api/body.py),
which sees every read of it.

    protocol_for(settings)        the protocol class for one server built in this process (uvicorn's `http=`)
    "service.api.connections:HttpProtocol"   for worker processes: reads its timeout from Settings() there
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

TIMEOUT_ANSWER = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                  b"content-length: %d\r\n\r\n")
TIMEOUT_BODY = (b'{"error":{"code":"request_timeout","message":"the request header did not arrive in time '
                b'(L2O_HEADER_TIMEOUT_S)","detail":null}}')


@functools.cache
def _configured_timeout() -> float:
    from service.config import Settings

    return Settings().header_timeout_s


class HttpProtocol(HttpToolsProtocol):
    header_timeout_s: float | None = None   # None: L2O_HEADER_TIMEOUT_S, read once per process

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        if self._header_timer is None and (before is None or before.response_complete):
            self._arm()   # the first byte of a new request on a kept-alive connection
        super().data_received(data)
        if self.cycle is not None and self.cycle is not before:
            self._disarm()   # a new request's header is complete

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        timeout = self.header_timeout_s if self.header_timeout_s is not None else _configured_timeout()
        self._header_timer = self.loop.call_later(timeout, self._header_timed_out)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        self.transport.write(TIMEOUT_ANSWER % len(TIMEOUT_BODY) + TIMEOUT_BODY)
        self.transport.close()


def protocol_for(settings: Any) -> type[HttpProtocol]:
    """The protocol class with this server's header timeout."""
    return type("HttpProtocol", (HttpProtocol,), {"header_timeout_s": settings.header_timeout_s})
