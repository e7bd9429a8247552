"""Slots for long-lived answers (job event streams): at most L2O_EVENTS_MAX_PER_KEY open at once per API
key and L2O_EVENTS_MAX_TOTAL in all, counted in this process; one more is 429 with Retry-After.

Each open stream polls the database for its job, so a thousand of them from one key slowed every other
request tenfold (issue 20). A slot is given back when its stream ends, however it ends: the generator's
own `finally`, or, for a stream the server never started iterating (its client left at once), when the
generator is collected.
"""

from __future__ import annotations

import threading
import weakref

from service.errors import RateLimited


class StreamSlot:
    def __init__(self, slots: StreamSlots, key_id: str) -> None:
        self._slots, self._key_id, self._held = slots, key_id, True

    def release(self) -> None:
        with self._slots.lock:
            if not self._held:
                return
            self._held = False
            self._slots.total -= 1
            left = self._slots.by_key[self._key_id] - 1
            if left:
                self._slots.by_key[self._key_id] = left
            else:
                del self._slots.by_key[self._key_id]

    def bind(self, stream: object) -> object:
        """Give the slot back when `stream` is collected, if nothing released it before."""
        weakref.finalize(stream, self.release)
        return stream


class StreamSlots:
    def __init__(self, per_key: int, total: int, retry_after_s: float = 5.0) -> None:
        self.per_key, self.max_total, self.retry_after_s = per_key, total, retry_after_s
        self.by_key: dict[str, int] = {}
        self.total = 0
        self.lock = threading.Lock()

    def take(self, key_id: str) -> StreamSlot:
        with self.lock:
            held = self.by_key.get(key_id, 0)
            if held >= self.per_key:
                raise RateLimited(f"this API key has {held} event streams open, the most it may hold at once "
                                  "(L2O_EVENTS_MAX_PER_KEY): close one first", retry_after=self.retry_after_s,
                                  detail={"open": held, "limit": self.per_key})
            if self.total >= self.max_total:
                raise RateLimited(f"the server has {self.total} event streams open, the most it serves at once "
                                  "(L2O_EVENTS_MAX_TOTAL): retry shortly", retry_after=self.retry_after_s,
                                  detail={"limit": self.max_total})
            self.by_key[key_id] = held + 1
            self.total += 1
        return StreamSlot(self, key_id)
