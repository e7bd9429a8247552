"""Cross-session batching: step requests that arrive while the LSTM is busy run together, as one call.

    request -> submit() -> (queued while a batch runs) -> SessionService._step_many(batch) -> answer

No request waits for company: the first one after a quiet spell runs at once, alone; those that arrive
while it runs make the next batch. Under load, the work a step pays for once per call (a thread hop
for a large batch, waking the kernel's threads, the Python around the call) is shared by every request
in the batch.
Batching never changes a session's numbers: `_step_many` gives each request the bits `_step` would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import anyio

MAX_BATCH_REQUESTS = 1024
MAX_BATCH_BYTES = 256 * 1024 * 1024   # request bodies per batch: bounds the memory one batch holds


class StepBatcher:
    def __init__(self, run_many: Callable[[Sequence[Any]], list[Any]], *,
                 max_requests: int = MAX_BATCH_REQUESTS, max_bytes: int = MAX_BATCH_BYTES,
                 inline_bytes: int = 0) -> None:
        self.run_many = run_many
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        # A batch whose bodies total at most this runs on the event loop itself: handing it to a worker
        # thread and back costs more than the work (each wake of a sleeping thread can take a fraction
        # of a millisecond), and the loop is held for a few milliseconds at most.
        self.inline_bytes = inline_bytes
        self._queue: list[tuple[Any, asyncio.Future[Any]]] = []
        self._runner: asyncio.Task[None] | None = None
        self.batches = 0           # for tests and metrics: calls made, and requests they carried
        self.requests = 0

    async def submit(self, request: Any) -> Any:
        """The request's answer; raises its error (an L2OError for anything about the request itself)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        if self._runner is None:
            self._runner = asyncio.create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[Any, asyncio.Future[Any]]]:
        size = count = 0
        for request, _ in self._queue:
            size += len(request.body)
            if count and (count == self.max_requests or size > self.max_bytes):
                break
            count += 1
        batch, self._queue = self._queue[:count], self._queue[count:]
        return batch

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._take()
                self.batches += 1
                self.requests += len(batch)
                # This task belongs to no request, so a client that hangs up cancels only its own wait,
                # never a batch that others share.
                requests = [request for request, _ in batch]
                try:
                    if sum(len(r.body) for r in requests) <= self.inline_bytes:
                        results = self.run_many(requests)
                    else:
                        results = await anyio.to_thread.run_sync(self.run_many, requests)
                except Exception as exc:   # a fault outside any one request fails the whole batch
                    results = [exc] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():   # its waiter was cancelled
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._runner = None
