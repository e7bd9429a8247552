"""Large bodies without copies: a request sent as the pieces it is made of, an answer read into a buffer
that is used again.

A 1M-coordinate step sends and receives 4 MB. Joined into one bytes object, then joined again by httpx,
then copied into a writable bytearray, each of those copies landed in fresh memory, and the page faults
of fresh memory cost about 2 ms per 4 MB here (1,000 faults per step on the client, /proc/self/stat).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence

import httpx

Piece = bytes | bytearray | memoryview
# h11 joins every piece it is given into new bytes: pieces this small come from the allocator's free
# lists instead of fresh pages.
MAX_PIECE = 256 * 1024


class Pieces:
    """A request body given as its pieces, in order, sent with a Content-Length and never joined here. It can
    be sent again (a retry sends the same bytes), so the pieces must not change until the call returns."""

    def __init__(self, pieces: Sequence[Piece]) -> None:
        self.pieces = [memoryview(p).cast("B") for p in pieces]
        self.size = sum(len(p) for p in self.pieces)

    def __iter__(self) -> Iterator[bytes]:
        for piece in self.pieces:
            for at in range(0, len(piece), MAX_PIECE):
                yield piece[at:at + MAX_PIECE]  # type: ignore[misc]

    async def aiter(self) -> AsyncIterator[bytes]:
        """The same chunks for an httpx.AsyncClient (not `__aiter__`: httpx would take an object that is
        both for a sync body)."""
        for chunk in self:
            yield chunk


class AnswerBuffer:
    """Where an answer's body is read, in place: `view` is the last body read, valid until the next."""

    def __init__(self) -> None:
        self._data = bytearray()
        self.view = memoryview(self._data)

    def read(self, response: httpx.Response) -> memoryview:
        self._start(response)
        for chunk in response.iter_bytes():
            self._put(chunk)
        return self._finish()

    async def aread(self, response: httpx.Response) -> memoryview:
        self._start(response)
        async for chunk in response.aiter_bytes():
            self._put(chunk)
        return self._finish()

    def _start(self, response: httpx.Response) -> None:
        declared = response.headers.get("content-length", "")
        encoded = response.headers.get("content-encoding", "identity") != "identity"
        size = int(declared) if declared.isdigit() and not encoded else 0
        if size > len(self._data):
            # A new buffer, not a resize: the arrays of the last answer may still be viewing the old one.
            self._data = bytearray(size)
        self._at = 0

    def _put(self, chunk: bytes) -> None:
        end = self._at + len(chunk)
        if end > len(self._data):  # more than was declared (or nothing was): grow, keeping what came
            grown = bytearray(max(end, 2 * len(self._data)))
            grown[:self._at] = memoryview(self._data)[:self._at]
            self._data = grown
        memoryview(self._data)[self._at:end] = chunk
        self._at = end

    def _finish(self) -> memoryview:  # (httpx closed the response when its last chunk was read)
        self.view = memoryview(self._data)[:self._at]
        return self.view
