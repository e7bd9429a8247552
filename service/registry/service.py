"""The registry's operations: register versions, resolve references, move aliases, delete versions.

Every function takes the caller's Session and only flushes; the caller commits. Each raises an error from
service.errors naming what was wrong, before anything is written where it can.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from service.errors import Forbidden, NotFound, VersionInUse
from service.lopt import Checkpoint
from service.lopt.checkpoint import sha256_hex
from service.registry import checkpoints, repository
from service.registry.models import Alias, Optimizer, OptimizerVersion
from service.registry.names import Reference, check_alias, check_name

SOURCES = ("upload", "pretrained", "job")


def never_in_use(version_id: int) -> bool:
    """The default `is_version_in_use`: without sessions nothing holds a version."""
    return False


@dataclass(frozen=True)
class ResolvedVersion:
    """A version with its checkpoint loaded: what a session needs to run steps."""

    version: OptimizerVersion
    checkpoint: Checkpoint

    @property
    def reference(self) -> str:
        return self.version.reference


def list_optimizers(db: Session) -> list[Optimizer]:
    return repository.list_optimizers(db)


def get_optimizer(db: Session, name: str) -> Optimizer:
    optimizer = repository.get_optimizer(db, check_name(name))
    if optimizer is None:
        raise NotFound(f"no optimizer named {name!r}", detail={"name": name})
    return optimizer


def get_version(db: Session, name: str, number: int) -> OptimizerVersion:
    version = repository.get_version(db, check_name(name), number)
    if version is None:
        get_optimizer(db, name)  # an unknown name says so, rather than blaming the number
        raise NotFound(f"optimizer {name!r} has no version {number}", detail={"name": name, "version": number})
    return version


# `name@latest` means the newest version unless an alias of that name has been set explicitly.
LATEST = "latest"


def resolve(db: Session, ref: str | Reference) -> OptimizerVersion:
    """`name` (newest version), `name:N` or `name@alias` -> the version row (checkpoint bytes deferred)."""
    ref = ref if isinstance(ref, Reference) else Reference.parse(ref)
    if ref.version is not None:
        return get_version(db, ref.name, ref.version)
    if ref.alias is not None:
        version = repository.get_version_by_alias(db, ref.name, ref.alias)
        if version is None and ref.alias == LATEST:
            return resolve(db, Reference(ref.name))
        if version is None:
            get_optimizer(db, ref.name)
            raise NotFound(f"optimizer {ref.name!r} has no alias {ref.alias!r}",
                           detail={"name": ref.name, "alias": ref.alias})
        return version
    version = repository.get_latest_version(db, ref.name)
    if version is None:
        get_optimizer(db, ref.name)
        raise NotFound(f"optimizer {ref.name!r} has no versions", detail={"name": ref.name})
    return version


def checkpoint_bytes(db: Session, version: OptimizerVersion) -> bytes:
    return repository.get_checkpoint_bytes(db, version.id)


def load(db: Session, ref: str | Reference) -> ResolvedVersion:
    """Resolve `ref` and load its checkpoint (validated when it was registered)."""
    version = resolve(db, ref)
    return ResolvedVersion(version, Checkpoint.from_bytes(checkpoint_bytes(db, version)))


@dataclass(frozen=True)
class Publisher:
    """Who a job publishes for: the key that submitted it, and whether that key holds the admin scope."""

    key_id: int | None
    admin: bool


def check_publisher(db: Session, name: str, publisher: Publisher) -> None:
    """A job may publish a new name, or a name its own key created; any other name needs the admin scope
    (else a train key could move every tenant's bare `name` to weights of its choosing)."""
    optimizer = repository.get_optimizer(db, check_name(name))
    if optimizer is not None:
        _check_publisher(db, optimizer, publisher, new=optimizer.version_counter == 0)


def _check_publisher(db: Session, optimizer: Optimizer, publisher: Publisher, *, new: bool) -> None:
    if publisher.admin or new:
        return
    creator = repository.creator_key_id(db, optimizer)
    if creator is None or creator != publisher.key_id:
        raise Forbidden(f"optimizer {optimizer.name!r} was not created by this key: publishing a version of it "
                        "needs the 'admin' scope (a job may publish a new name, or one its own key created)",
                        detail={"name": optimizer.name, "required": ["admin"]})


def register_version(db: Session, name: str, data: bytes, *, expected_sha256: str | None = None,
                     config: dict[str, Any] | None = None, source: str = "upload", job_id: str | None = None,
                     evaluation: dict[str, Any] | None = None, publisher: Publisher | None = None) -> OptimizerVersion:
    """Validate `data` and store it as the next version of `name`, creating the name if it is new. With a
    `publisher` (a job), the name must be new or its key's own (see `check_publisher`)."""
    check_name(name)
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    checkpoint, stored = checkpoints.validate(data, expected_sha256=expected_sha256, config=config)
    optimizer = repository.get_or_create_optimizer(db, name)
    number = repository.next_version_number(db, optimizer)  # locks the name's row: the check below is race-free
    if publisher is not None:
        _check_publisher(db, optimizer, publisher, new=number == 1)
    return repository.add_version(db, OptimizerVersion(
        optimizer=optimizer, version=number, checkpoint=stored, config=checkpoint.config.to_dict(),
        sha256=sha256_hex(stored), size=len(stored), source=source, job_id=job_id, evaluation=evaluation))


def set_alias(db: Session, name: str, alias: str, number: int) -> Alias:
    check_alias(alias)
    version = get_version(db, name, number)
    return repository.set_alias(db, version.optimizer, alias, version)


def delete_alias(db: Session, name: str, alias: str) -> None:
    check_alias(alias)
    row = repository.get_alias(db, get_optimizer(db, name), alias)
    if row is None:
        raise NotFound(f"optimizer {name!r} has no alias {alias!r}", detail={"name": name, "alias": alias})
    repository.delete_alias(db, row)


def delete_version(db: Session, name: str, number: int, *,
                   is_version_in_use: Callable[[int], bool] = never_in_use) -> None:
    """Delete a version and the aliases pointing at it; 409 while a live session uses it."""
    version = get_version(db, name, number)
    if is_version_in_use(version.id):
        raise VersionInUse(f"{version.reference} is in use by a live session: close the session first",
                           detail={"name": name, "version": number})
    repository.delete_version(db, version)


def register_if_new(db: Session, name: str, data: bytes, *, source: str,
                    evaluation: dict[str, Any] | None = None) -> OptimizerVersion | None:
    """Register `data` under `name` unless a version of `name` already has these exact bytes."""
    if repository.find_version_by_digest(db, check_name(name), sha256_hex(data)) is not None:
        return None
    return register_version(db, name, data, source=source, evaluation=evaluation)

