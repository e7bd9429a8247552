"""Request bodies under a size limit: refused with 413 before they are read whole.

Every request's body is capped at L2O_MAX_BODY_BYTES (the JSON specs of keys, aliases and jobs) by
BodyLimitMiddleware, which counts bytes as they arrive, so a body sent without a Content-Length (chunked)
is cut off as soon as it passes the cap. The routes that take large raw bodies (steps, checkpoint uploads,
session states) read them with `read_body`, which raises the cap for that request to their own setting.
"""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import HTTPException, Request

from service.errors import PayloadTooLarge

LIMIT_SCOPE_KEY = "l2o.body_limit"  # (bytes, setting) for the current request


async def read_body(request: Request, limit: int, setting: str) -> bytearray:
    """The body as a writable buffer (so tensors can view it without a copy), or 413 as soon as the
    declared Content-Length or the bytes counted so far pass `limit`.

    Memory is held only for bytes that arrived: a declared Content-Length is a claim, and 60 connections
    that each declared 16 MiB and sent one byte held 800 MB while the buffer was allocated up front."""
    request.scope[LIMIT_SCOPE_KEY] = (limit, setting)
    size = _parse_length(request.headers.get("content-length"))
    if size is not None and size > limit:
        raise _too_large(size, limit, setting)
    chunks, got = [], 0
    async for chunk in request.stream():
        got += len(chunk)
        if got > limit:
            raise _too_large(None, limit, setting)
        if chunk:
            chunks.append(chunk)
    if len(chunks) == 1:
        return bytearray(chunks[0])
    body = bytearray(got)   # each piece copied once, into place
    view, at = memoryview(body), 0
    for chunk in chunks:
        view[at:at + len(chunk)] = chunk
        at += len(chunk)
    view.release()
    return body


def _too_large(size: int | None, limit: int, setting: str) -> PayloadTooLarge:
    return PayloadTooLarge(_message(size, limit, setting), detail={"limit": limit, "setting": setting})


def _message(size: int | None, limit: int, setting: str) -> str:
    what = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    return f"the request body is {what}, over the limit of {limit} bytes ({setting})"


class BodyTooLarge(HTTPException):
    """Raised from `receive` inside a route. An HTTPException, because FastAPI re-raises those from its own
    body parsing (anything else becomes a 400); the app's handler renders it as payload_too_large."""

    def __init__(self, size: int | None, limit: int, setting: str) -> None:
        super().__init__(status_code=413, detail=_message(size, limit, setting))


class BodyTimeout(HTTPException):
    """No piece of the body arrived within L2O_BODY_TIMEOUT_S: 408, and the connection is closed."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(status_code=408, headers={"Connection": "close"},
                         detail=f"no part of the request body arrived for {timeout_s:g} s (L2O_BODY_TIMEOUT_S)")


class BodyLimitMiddleware:
    """Pure ASGI middleware: counts each request's body bytes as the app receives them and stops at the cap;
    a body that stops arriving for `timeout_s` is answered 408."""

    def __init__(self, app: Any, limit: int, setting: str = "L2O_MAX_BODY_BYTES", timeout_s: float = 30.0) -> None:
        self.app, self.limit, self.setting, self.timeout_s = app, limit, setting, timeout_s

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[LIMIT_SCOPE_KEY] = (self.limit, self.setting)
        received, answered, complete = 0, False, False
        declared = _content_length(scope)

        async def receive_within_limit() -> dict[str, Any]:
            nonlocal received, complete
            # Once the body is in (or the answer has started), a receive is a streaming response waiting for
            # the client to hang up, for as long as the stream lasts: no body timeout applies to it.
            if answered or complete:
                return await receive()
            limit, setting = scope[LIMIT_SCOPE_KEY]  # read_body may have raised it for this request
            if declared is not None and declared > limit:
                raise BodyTooLarge(declared, limit, setting)
            with anyio.move_on_after(self.timeout_s) as wait:
                message = await receive()
            if wait.cancelled_caught:
                raise BodyTimeout(self.timeout_s)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(None, limit, setting)
                complete = not message.get("more_body", False)
            return message

        async def send_noting_the_answer(message: dict[str, Any]) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
            await send(message)

        await self.app(scope, receive_within_limit, send_noting_the_answer)


def _content_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return _parse_length(value)
    return None


def _parse_length(value: str | bytes | None) -> int | None:
    """A Content-Length as a number, None when absent or not plain ASCII digits of a 64-bit size."""
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 19:
        return None
    return int(value)
