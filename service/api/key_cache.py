"""Keys seen valid recently, so live training runs keep stepping while the database is unreachable.

Every request checks its key against the database, so a revoked key stops working at once. Only when
that check cannot reach the database does the app fall back to this cache: a key that passed the check
within L2O_AUTH_GRACE_S is let in (steps on live sessions need nothing else from the database), and any
other key gets 503, never a 401 it did not earn. The cache holds each key's hash, never the key.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from service.registry.models import ApiKey


class KeyCache:
    def __init__(self, grace_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace_s, self.clock = grace_s, clock
        self._seen: dict[str, tuple[ApiKey, float]] = {}  # key hash -> (a detached copy, when checked)
        self._lock = threading.Lock()

    def remember(self, row: ApiKey) -> None:
        if self.grace_s <= 0:
            return
        copy = ApiKey(id=row.id, name=row.name, prefix=row.prefix, key_hash=row.key_hash, scopes=list(row.scopes),
                      created_at=row.created_at, revoked_at=None)
        with self._lock:
            self._seen[row.key_hash] = (copy, self.clock())

    def recall(self, key_hash: str) -> ApiKey | None:
        """The key checked valid within the grace period, else None."""
        with self._lock:
            seen = self._seen.get(key_hash)
            if seen is None:
                return None
            row, at = seen
            if self.clock() - at > self.grace_s:
                del self._seen[key_hash]
                return None
            return row
