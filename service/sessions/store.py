"""Where session state lives: the `SessionStore` interface and the choice between its implementations.

    memory       MemoryStore: a dict in this process; saved to a file on graceful shutdown, loaded on start
    redis://...  RedisStore: shared by every API process; a step's state is written before its answer leaves

Stores are synchronous and thread-safe: the step service calls them from worker threads, next to the
torch work, so the event loop never waits on either. Each write that must be atomic (create under the
limits, commit a step only if the session is still at the step it was read at, expire with a tombstone)
is one call here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from service.sessions.record import SessionInfo, SessionRecord

TOMBSTONE_TTL_S = 7 * 24 * 3600.0  # how long an expired session is remembered as expired, not unknown


class SessionStore(ABC):
    # True for a store that keeps the state tensors it is given, wherever they are (so on a GPU they stay
    # in its memory between steps); False for one that keeps their bytes (states come back on the CPU).
    keeps_tensors: bool = False

    def open(self) -> None:  # noqa: B027 - optional hook
        """Called once at app start."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Called once at graceful shutdown."""

    @abstractmethod
    def add(self, record: SessionRecord, *, max_per_owner: int, max_total_bytes: int) -> None:
        """Insert a new session, atomically with the limits (TooManySessions, AtCapacity)."""

    @abstractmethod
    def get(self, session_id: str) -> SessionRecord | None: ...

    @abstractmethod
    def info(self, session_id: str) -> SessionInfo | None: ...

    @abstractmethod
    def list_owner(self, owner: str) -> list[SessionInfo]:
        """The owner's sessions, oldest first."""

    @abstractmethod
    def commit_step(self, session_id: str, *, expected_step: int, hc: torch.Tensor, answer: bytes | bytearray,
                    answer_type: str, used_at: float) -> bool:
        """Store the state after step `expected_step` with its answer, advancing the count by one.

        False, and nothing written, when the session is gone or no longer at `expected_step` (another
        process applied that step first).
        """

    def step_buffer(self, record: SessionRecord) -> torch.Tensor:
        """Where a step may write the state that follows `record`'s: a tensor of the state's shape and
        dtype that nobody reads until `commit_step` stores it. This default allocates one."""
        return torch.empty_like(record.hc)

    @abstractmethod
    def delete(self, session_id: str) -> bool: ...

    @abstractmethod
    def expire(self, session_id: str, *, idle_before: float, now: float) -> bool:
        """Remove the session if it was last used before `idle_before`, leaving a tombstone."""

    @abstractmethod
    def tombstone(self, session_id: str, *, now: float) -> str | None:
        """The owner of an expired session still remembered, else None."""

    @abstractmethod
    def drop_tombstone(self, session_id: str) -> None: ...

    @abstractmethod
    def idle_ids(self, idle_before: float) -> list[str]:
        """Sessions last used before `idle_before`."""

    @abstractmethod
    def ids_using(self, version_id: str) -> list[str]: ...

    @abstractmethod
    def total_bytes(self) -> int:
        """Bytes of LSTM state held for every session."""
