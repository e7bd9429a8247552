"""How the step service reaches the registry: resolve a reference, fetch a version's checkpoint bytes.

Sessions only read the registry, each read in its own short database session, so a step never holds a
database connection; the step path itself reads the registry only to fill the weights cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from service.registry import repository
from service.registry import service as registry
from service.registry.db import Database


@dataclass(frozen=True)
class VersionRef:
    """One immutable optimizer version, as a session pins it."""

    name: str
    version: int
    id: str
    digest: str

    @property
    def reference(self) -> str:
        return f"{self.name}:{self.version}"


class VersionSource(Protocol):
    def resolve(self, reference: str) -> VersionRef: ...

    def checkpoint(self, version_id: str) -> bytes | None:
        """The checkpoint bytes of a version, None if it no longer exists."""


class RegistryVersions:
    def __init__(self, db: Database) -> None:
        self.db = db

    def resolve(self, reference: str) -> VersionRef:
        with self.db.session() as s:
            v = registry.resolve(s, reference)
            return VersionRef(v.optimizer.name, v.version, str(v.id), v.sha256)

    def checkpoint(self, version_id: str) -> bytes | None:
        with self.db.session() as s:
            if repository.get_version_by_id(s, int(version_id)) is None:
                return None
            return repository.get_checkpoint_bytes(s, int(version_id))
