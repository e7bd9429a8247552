"""Reading a request body under a size limit: refused with 413 before it is read whole."""

from __future__ import annotations

from fastapi import Request

from service.errors import PayloadTooLarge


async def read_body(request: Request, limit: int, setting: str) -> bytearray:
    """The body as a writable buffer (so tensors can view it without a copy), or 413 as soon as the
    declared Content-Length or the bytes counted so far pass `limit`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit, setting)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(None, limit, setting)
    return body


def _too_large(size: int | None, limit: int, setting: str) -> PayloadTooLarge:
    what = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    return PayloadTooLarge(f"the request body is {what}, over the limit of {limit} bytes ({setting})",
                           detail={"limit": limit, "setting": setting})
