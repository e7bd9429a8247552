"""Every database query of the registry. Functions take the caller's Session and only flush: the caller
(a handler, a worker task, the CLI) owns the transaction and commits it."""

from __future__ import annotations

import json
import sqlite3

from sqlalchemy import Connection, and_, delete, exists, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, selectinload

from service.registry.models import (
    Alias,
    ApiKey,
    Job,
    KeyGrant,
    Optimizer,
    OptimizerTag,
    OptimizerVersion,
    VersionTag,
    utcnow,
)

# --- API keys ---------------------------------------------------------------------------------------


def add_key(db: Session, key: ApiKey) -> ApiKey:
    db.add(key)
    db.flush()
    return key


def get_key(db: Session, key_id: int) -> ApiKey | None:
    return db.get(ApiKey, key_id)


# Sent through the driver's own cursor: every request makes this query, and SQLAlchemy's statement and
# result layers cost several times the query itself. Connection errors still surface as SQLAlchemy's.
_KEY_BY_HASH = "SELECT id, name, prefix, key_hash, scopes, revoked_at FROM api_keys WHERE key_hash = {}"


def get_key_by_hash(db: Session | Connection | sqlite3.Connection, key_hash: str) -> KeyGrant | None:
    """The key with this hash as a KeyGrant (a plain value, in no session). `db` may be a bare sqlite3
    connection (Database.key_reader on a SQLite file)."""
    if isinstance(db, sqlite3.Connection):
        try:
            row = db.execute(_KEY_BY_HASH.format("?"), (key_hash,)).fetchone()
        except sqlite3.Error as exc:
            raise OperationalError(_KEY_BY_HASH, (key_hash,), exc) from exc
    else:
        conn = db.connection() if isinstance(db, Session) else db
        marker = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        row = conn.exec_driver_sql(_KEY_BY_HASH.format(marker), (key_hash,)).fetchone()
    if row is None:
        return None
    key_id, name, prefix, digest, scopes, revoked_at = row
    if isinstance(scopes, str | bytes):   # SQLite hands JSON back as text; PostgreSQL's driver parses it
        scopes = json.loads(scopes)
    return KeyGrant(key_id, name, prefix, digest, tuple(scopes), revoked_at is not None)


def list_keys(db: Session) -> list[ApiKey]:
    return list(db.scalars(select(ApiKey).order_by(ApiKey.id)))


def count_live_keys(db: Session) -> int:
    return db.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))) or 0


# --- optimizers -------------------------------------------------------------------------------------


def _with_children(stmt):
    return stmt.options(selectinload(Optimizer.versions).selectinload(OptimizerVersion.tag_rows),
                        selectinload(Optimizer.aliases).selectinload(Alias.target),
                        selectinload(Optimizer.tag_rows))


def list_optimizers(db: Session, *, contains: str | None = None, tags: list[tuple[str, str | None]] = (),
                    after: str | None = None, limit: int | None = None) -> list[Optimizer]:
    """Names in order, those containing `contains` and holding every tag of `tags` (key, value or None for
    any value), after the name `after`, at most `limit`."""
    stmt = select(Optimizer).order_by(Optimizer.name)
    if contains:
        stmt = stmt.where(Optimizer.name.contains(contains, autoescape=True))
    for key, value in tags:
        match = and_(OptimizerTag.optimizer_id == Optimizer.id, OptimizerTag.key == key)
        if value is not None:
            match = and_(match, OptimizerTag.value == value)
        stmt = stmt.where(exists().where(match))
    if after is not None:
        stmt = stmt.where(Optimizer.name > after)
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(db.scalars(_with_children(stmt)))


def get_optimizer(db: Session, name: str) -> Optimizer | None:
    return db.scalars(_with_children(select(Optimizer).where(Optimizer.name == name))).one_or_none()


def delete_optimizer(db: Session, optimizer: Optimizer) -> None:
    # One DELETE: its versions, aliases and tags go with it through the database's cascades (the ORM would
    # instead try to detach the versions it has loaded from their name).
    db.execute(delete(Optimizer).where(Optimizer.id == optimizer.id).execution_options(synchronize_session=False))
    db.expunge(optimizer)


def set_optimizer_tags(db: Session, optimizer: Optimizer, tags: dict[str, str]) -> None:
    _replace_tags(optimizer.tag_rows, tags, lambda k, v: OptimizerTag(key=k, value=v))
    db.flush()


def set_version_tags(db: Session, version: OptimizerVersion, tags: dict[str, str]) -> None:
    _replace_tags(version.tag_rows, tags, lambda k, v: VersionTag(key=k, value=v))
    db.flush()


def _replace_tags(rows: list, tags: dict[str, str], make) -> None:
    by_key = {row.key: row for row in rows}
    for key, row in by_key.items():
        if key not in tags:
            rows.remove(row)
    for key, value in tags.items():
        if key in by_key:
            by_key[key].value = value
        else:
            rows.append(make(key, value))


def get_or_create_optimizer(db: Session, name: str) -> Optimizer:
    """Insert the name unless it exists, race-free: a concurrent insert of the same name is a no-op."""
    insert = postgresql.insert if db.get_bind().dialect.name == "postgresql" else sqlite.insert
    db.execute(insert(Optimizer).values(name=name, version_counter=0, created_at=utcnow())
               .on_conflict_do_nothing(index_elements=["name"]))
    return db.scalars(select(Optimizer).where(Optimizer.name == name)).one()


def next_version_number(db: Session, optimizer: Optimizer) -> int:
    """Bump the optimizer's counter in one UPDATE, which locks its row until commit: no two uploads
    get the same number, and a deleted version's number is never handed out again."""
    number = db.scalar(update(Optimizer).where(Optimizer.id == optimizer.id)
                       .values(version_counter=Optimizer.version_counter + 1)
                       .returning(Optimizer.version_counter))
    db.expire(optimizer, ["version_counter"])
    return int(number)


def creator_key_id(db: Session, optimizer: Optimizer) -> int | None:
    """The key whose job published the name's oldest remaining version; None when an upload or the shipped
    checkpoints made it (an admin), or that key is gone."""
    row = db.execute(select(OptimizerVersion.source, Job.key_id)
                     .outerjoin(Job, Job.id == OptimizerVersion.job_id)
                     .where(OptimizerVersion.optimizer_id == optimizer.id)
                     .order_by(OptimizerVersion.version).limit(1)).one_or_none()
    return row.key_id if row is not None and row.source == "job" else None


# --- versions ---------------------------------------------------------------------------------------


def add_version(db: Session, version: OptimizerVersion) -> OptimizerVersion:
    db.add(version)
    db.flush()
    return version


_VERSION_CHILDREN = (selectinload(OptimizerVersion.optimizer), selectinload(OptimizerVersion.aliases),
                     selectinload(OptimizerVersion.tag_rows))


def _version_query(name: str):
    return (select(OptimizerVersion).join(OptimizerVersion.optimizer).where(Optimizer.name == name)
            .options(*_VERSION_CHILDREN))


def get_version(db: Session, name: str, number: int) -> OptimizerVersion | None:
    return db.scalars(_version_query(name).where(OptimizerVersion.version == number)).one_or_none()


def get_version_by_id(db: Session, version_id: int) -> OptimizerVersion | None:
    stmt = select(OptimizerVersion).where(OptimizerVersion.id == version_id).options(*_VERSION_CHILDREN)
    return db.scalars(stmt).one_or_none()


def get_latest_version(db: Session, name: str) -> OptimizerVersion | None:
    return db.scalars(_version_query(name).order_by(OptimizerVersion.version.desc()).limit(1)).first()


def get_version_by_alias(db: Session, name: str, alias: str) -> OptimizerVersion | None:
    stmt = (select(OptimizerVersion).join(Alias, Alias.version_id == OptimizerVersion.id)
            .join(Optimizer, Optimizer.id == Alias.optimizer_id)
            .where(Optimizer.name == name, Alias.name == alias)
            .options(*_VERSION_CHILDREN))
    return db.scalars(stmt).one_or_none()


def find_version_by_digest(db: Session, name: str, sha256: str) -> OptimizerVersion | None:
    return db.scalars(_version_query(name).where(OptimizerVersion.sha256 == sha256)
                      .order_by(OptimizerVersion.version.desc()).limit(1)).first()


def get_checkpoint_bytes(db: Session, version_id: int) -> bytes:
    return db.scalars(select(OptimizerVersion.checkpoint).where(OptimizerVersion.id == version_id)).one()


def delete_version(db: Session, version: OptimizerVersion) -> None:
    # Its aliases go with it (the ORM deletes those it has loaded, the database's cascade the rest).
    db.delete(version)
    db.flush()


# --- aliases ----------------------------------------------------------------------------------------


def get_alias(db: Session, optimizer: Optimizer, alias: str) -> Alias | None:
    return db.scalars(select(Alias).where(Alias.optimizer_id == optimizer.id, Alias.name == alias)).one_or_none()


def set_alias(db: Session, optimizer: Optimizer, alias: str, version: OptimizerVersion) -> Alias:
    row = get_alias(db, optimizer, alias)
    if row is None:
        row = Alias(optimizer_id=optimizer.id, name=alias, version_id=version.id)
        db.add(row)
    else:
        row.version_id = version.id
        row.updated_at = utcnow()
    db.flush()
    return row


def delete_alias(db: Session, alias: Alias) -> None:
    db.delete(alias)
    db.flush()
