"""Steps on one session run one at a time, in the order they arrived: a lock per session id, held only
while someone holds or waits for it.

    async with turns.of(session_id):   # waits for the requests on this session that came first
        ...

Entries are counted, not weakly referenced: the entry goes when its last user leaves, so the ids of
finished sessions hold nothing, and a session stepped over and over does not build a new lock (and a
weak reference, and its callback) for every step.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class SessionTurns:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def of(self, session_id: str) -> _Turn:
        return _Turn(self._entries, session_id)

    def __len__(self) -> int:
        """Sessions with a request holding or waiting for its turn."""
        return len(self._entries)


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()   # wakes waiters first come, first served: steps stay in order
        self.users = 0


class _Turn:
    __slots__ = ("_entries", "_id", "_entry")

    def __init__(self, entries: dict[str, _Entry], session_id: str) -> None:
        self._entries, self._id = entries, session_id

    async def __aenter__(self) -> None:
        entry = self._entries.get(self._id)
        if entry is None:
            entry = self._entries[self._id] = _Entry()
        entry.users += 1
        self._entry = entry
        try:
            await entry.lock.acquire()
        except BaseException:   # cancelled while waiting: leave without the turn
            self._leave()
            raise

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._entry.lock.release()
        self._leave()

    def _leave(self) -> None:
        self._entry.users -= 1
        if not self._entry.users:
            del self._entries[self._id]
