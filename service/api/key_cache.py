"""Keys seen valid recently, so live training runs keep stepping while the database is unreachable.

Every request checks its key against the database, so a revoked key stops working at once. Only when
that check cannot reach the database does the app fall back to this cache: a key that passed the check
within L2O_AUTH_GRACE_S is let in (steps on live sessions need nothing else from the database), and any
other key gets 503, never a 401 it did not earn. The cache holds each key's hash, never the key.

Revocation wins over the cache: a key is forgotten when this process revokes it and whenever the database
answers 401 for it, so a revoked key is refused through any later outage. (Another process learns of a
revocation at its next check of that key; L2O_AUTH_GRACE_S=0 turns the cache off altogether.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from service.registry.models import KeyGrant


class KeyCache:
    def __init__(self, grace_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace_s, self.clock = grace_s, clock
        self._seen: dict[str, tuple[KeyGrant, float]] = {}  # key hash -> (the key, when checked)
        self._lock = threading.Lock()

    def remember(self, key: KeyGrant) -> None:
        if self.grace_s <= 0:
            return
        with self._lock:
            self._seen[key.key_hash] = (key, self.clock())

    def forget(self, key_hash: str) -> None:
        """The database refused this key: it must not pass through the cache again."""
        with self._lock:
            self._seen.pop(key_hash, None)

    def forget_id(self, key_id: int) -> None:
        """The key with this id was revoked."""
        with self._lock:
            for key_hash in [h for h, (row, _) in self._seen.items() if row.id == key_id]:
                del self._seen[key_hash]

    def recall(self, key_hash: str) -> KeyGrant | None:
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
