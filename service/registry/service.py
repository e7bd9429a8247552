"""The registry's operations: register versions, resolve references, move aliases, describe and tag names
and versions, search, delete versions and names, attach evaluations.

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
from service.registry import checkpoints, repository, tags
from service.registry.models import Alias, Optimizer, OptimizerVersion
from service.registry.names import Reference, check_alias, check_name

# Keep the field's value as it is (an absent field of a PATCH), as opposed to None, which clears it.
UNCHANGED: Any = object()

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


def search(db: Session, *, contains: str | None = None, tag_filters: tuple[str, ...] = (),
           after: str | None = None, limit: int = 100) -> list[Optimizer]:
    """A page of names, in order: those containing `contains` and holding every tag filter (`key:value`, or
    `key` for any value), after the name `after`."""
    filters = [tags.parse_filter(f) for f in tag_filters]
    return repository.list_optimizers(db, contains=contains or None, tags=filters, after=after, limit=limit)


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


def _check_publisher(db: Session, optimizer: Optimizer, publisher: Publisher, *, new: bool,
                     action: str = "publishing a version of it") -> None:
    if publisher.admin or new:
        return
    creator = repository.creator_key_id(db, optimizer)
    if creator is None or creator != publisher.key_id:
        raise Forbidden(f"optimizer {optimizer.name!r} was not created by this key: {action} needs the 'admin' "
                        "scope (a key may change only names its own jobs created)",
                        detail={"name": optimizer.name, "required": ["admin"]})


def check_editor(db: Session, optimizer: Optimizer, editor: Publisher, action: str) -> None:
    """Editing a name or its versions (descriptions, tags, evaluations) follows the publish rule: the key
    whose job created the name, or an admin."""
    _check_publisher(db, optimizer, editor, new=False, action=action)


def update_optimizer(db: Session, name: str, editor: Publisher, *, description: Any = UNCHANGED,
                     tag_patch: dict[str, str | None] | None = None) -> Optimizer:
    """Set or clear the name's description; merge `tag_patch` into its tags (a null value removes a key)."""
    optimizer = get_optimizer(db, name)
    new_tags = tags.merge(optimizer.tags, tag_patch) if tag_patch is not None else None
    new_description = tags.check_description(description) if description is not UNCHANGED else UNCHANGED
    check_editor(db, optimizer, editor, "editing it")
    _apply(db, optimizer, new_description, new_tags, repository.set_optimizer_tags)
    return optimizer


def update_version(db: Session, name: str, number: int, editor: Publisher, *, description: Any = UNCHANGED,
                   tag_patch: dict[str, str | None] | None = None) -> OptimizerVersion:
    version = get_version(db, name, number)
    new_tags = tags.merge(version.tags, tag_patch) if tag_patch is not None else None
    new_description = tags.check_description(description) if description is not UNCHANGED else UNCHANGED
    check_editor(db, version.optimizer, editor, "editing its versions")
    _apply(db, version, new_description, new_tags, repository.set_version_tags)
    return version


def _apply(db: Session, row: Any, description: Any, new_tags: dict[str, str] | None, set_tags: Callable) -> None:
    if description is not UNCHANGED:
        row.description = description
    if new_tags is not None:
        set_tags(db, row, new_tags)
    db.flush()


def attach_evaluation(db: Session, version: OptimizerVersion, report: dict[str, Any]) -> OptimizerVersion:
    """Make `report` the version's evaluation (an evaluation job's result), replacing any before it."""
    version.evaluation = report
    db.flush()
    return version


def register_version(db: Session, name: str, data: bytes, *, expected_sha256: str | None = None,
                     config: dict[str, Any] | None = None, source: str = "upload", job_id: str | None = None,
                     evaluation: dict[str, Any] | None = None, publisher: Publisher | None = None,
                     description: str | None = None, tag_values: dict[str, str] | None = None) -> OptimizerVersion:
    """Validate `data` and store it as the next version of `name`, creating the name if it is new. With a
    `publisher` (a job), the name must be new or its key's own (see `check_publisher`). `description` and
    `tag_values` are the version's own."""
    check_name(name)
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    description = tags.check_description(description)
    tag_values = tags.check_tags(tag_values)
    checkpoint, stored = checkpoints.validate(data, expected_sha256=expected_sha256, config=config)
    optimizer = repository.get_or_create_optimizer(db, name)
    number = repository.next_version_number(db, optimizer)  # locks the name's row: the check below is race-free
    if publisher is not None:
        _check_publisher(db, optimizer, publisher, new=number == 1)
    version = repository.add_version(db, OptimizerVersion(
        optimizer=optimizer, version=number, checkpoint=stored, config=checkpoint.config.to_dict(),
        sha256=sha256_hex(stored), size=len(stored), source=source, job_id=job_id, evaluation=evaluation,
        description=description))
    if tag_values:
        repository.set_version_tags(db, version, tag_values)
    return version


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
    """Delete a version and the aliases pointing at it (as MLflow does; `name@latest` then means the newest
    version left); 409 while a live session uses it, so an open session never loses its checkpoint."""
    version = get_version(db, name, number)
    if is_version_in_use(version.id):
        raise VersionInUse(f"{version.reference} is in use by a live session: close the session first",
                           detail={"name": name, "version": number})
    repository.delete_version(db, version)


def delete_optimizer(db: Session, name: str, *, is_version_in_use: Callable[[int], bool] = never_in_use) -> None:
    """Delete a name with every version, alias and tag; 409 while a live session uses any of its versions.
    Uploading to the name again starts a new optimizer at version 1."""
    optimizer = get_optimizer(db, name)
    busy = [v.version for v in optimizer.versions if is_version_in_use(v.id)]
    if busy:
        raise VersionInUse(f"{name}:{busy[0]} is in use by a live session: close the session first",
                           detail={"name": name, "versions": busy})
    repository.delete_optimizer(db, optimizer)


def register_if_new(db: Session, name: str, data: bytes, *, source: str,
                    evaluation: dict[str, Any] | None = None) -> OptimizerVersion | None:
    """Register `data` under `name` unless a version of `name` already has these exact bytes."""
    if repository.find_version_by_digest(db, check_name(name), sha256_hex(data)) is not None:
        return None
    return register_version(db, name, data, source=source, evaluation=evaluation)

