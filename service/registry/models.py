"""The registry's tables as typed SQLAlchemy models. The Alembic migrations in migrations/ are the schema;
these models must match them (tests/registry/test_migrations.py checks that they do)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend: SQLite stores no offset, so one is put back on load."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous: pass a timezone-aware one")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON,
        list[str]: JSON,
    }


def grants(scopes: Iterable[str], scope: str) -> bool:
    """Whether a key holding `scopes` may act with `scope`: `admin` implies every scope, as a superuser does."""
    return scope in scopes or "admin" in scopes


class ApiKey(Base):
    """An API key, stored only as the sha256 of the key; `prefix` lets people tell keys apart."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]

    def has_scope(self, scope: str) -> bool:
        return grants(self.scopes, scope)


@dataclass(frozen=True)
class KeyGrant:
    """An ApiKey row as the request path reads it: who the caller is and what it may do. A plain immutable
    value, so the outage cache can hold it and threads can share it, and it costs no ORM bookkeeping on
    the one query every request makes."""

    id: int
    name: str
    prefix: str
    key_hash: str
    scopes: tuple[str, ...]
    revoked: bool = False

    def has_scope(self, scope: str) -> bool:
        return grants(self.scopes, scope)


class Optimizer(Base):
    """A registered name. `version_counter` only grows, so a deleted version's number is never reused."""

    __tablename__ = "optimizers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    version_counter: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    description: Mapped[str | None] = mapped_column(Text)

    versions: Mapped[list[OptimizerVersion]] = relationship(
        back_populates="optimizer", order_by="OptimizerVersion.version", passive_deletes=True)
    aliases: Mapped[list[Alias]] = relationship(
        back_populates="optimizer", order_by="Alias.name", passive_deletes=True)
    tag_rows: Mapped[list[OptimizerTag]] = relationship(
        order_by="OptimizerTag.key", cascade="all, delete-orphan", passive_deletes=True)

    @property
    def tags(self) -> dict[str, str]:
        return {t.key: t.value for t in self.tag_rows}


class OptimizerVersion(Base):
    """One immutable checkpoint: the safetensors bytes (config embedded), their digest and lineage."""

    __tablename__ = "optimizer_versions"
    __table_args__ = (UniqueConstraint("optimizer_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    optimizer_id: Mapped[int] = mapped_column(ForeignKey("optimizers.id", ondelete="CASCADE"), index=True)
    version: Mapped[int]
    checkpoint: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    config: Mapped[dict[str, Any]]
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int]
    source: Mapped[str] = mapped_column(String(16))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    evaluation: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    description: Mapped[str | None] = mapped_column(Text)

    optimizer: Mapped[Optimizer] = relationship(back_populates="versions")
    aliases: Mapped[list[Alias]] = relationship(
        back_populates="target", order_by="Alias.name", cascade="all, delete-orphan", passive_deletes=True)
    tag_rows: Mapped[list[VersionTag]] = relationship(
        order_by="VersionTag.key", cascade="all, delete-orphan", passive_deletes=True)

    @property
    def tags(self) -> dict[str, str]:
        return {t.key: t.value for t in self.tag_rows}

    @property
    def name(self) -> str:
        return self.optimizer.name

    @property
    def reference(self) -> str:
        return f"{self.optimizer.name}:{self.version}"


class Alias(Base):
    """A movable pointer `name@alias` to one version of the same optimizer."""

    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("optimizer_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    optimizer_id: Mapped[int] = mapped_column(ForeignKey("optimizers.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[int] = mapped_column(ForeignKey("optimizer_versions.id", ondelete="CASCADE"), index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    optimizer: Mapped[Optimizer] = relationship(back_populates="aliases")
    target: Mapped[OptimizerVersion] = relationship(back_populates="aliases")


class OptimizerTag(Base):
    """A key -> value label on a name, as MLflow's registered model tags: a row each, so a search by tag is
    the same indexed query on SQLite and PostgreSQL."""

    __tablename__ = "optimizer_tags"

    optimizer_id: Mapped[int] = mapped_column(ForeignKey("optimizers.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256), index=True)


class VersionTag(Base):
    """A key -> value label on one version."""

    __tablename__ = "version_tags"

    version_id: Mapped[int] = mapped_column(ForeignKey("optimizer_versions.id", ondelete="CASCADE"),
                                            primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class Job(Base):
    """A meta-training job. The job runner fills this row in; the registry only defines it."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: uuid.uuid4().hex)
    key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"), index=True)
    spec: Mapped[dict[str, Any]]
    state: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    iteration: Mapped[int] = mapped_column(default=0)
    total_iterations: Mapped[int] = mapped_column(default=0)
    meta_loss: Mapped[float | None] = mapped_column(Float)
    eval_loss: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    result_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("optimizer_versions.id", ondelete="SET NULL", use_alter=True))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0)
    resume_checkpoint: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Added by migration 0002 for the job runner (service/jobs): who holds the job, where it resumed, progress.
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    resumed_from: Mapped[int | None]
    elapsed_s: Mapped[float | None] = mapped_column(Float)
    eta_s: Mapped[float | None] = mapped_column(Float)
    phase: Mapped[str | None] = mapped_column(String(16))
    device: Mapped[str | None] = mapped_column(String(32))
    # Added by migration 0005: `train` (meta-train and publish) or `evaluate` (score a registered version).
    kind: Mapped[str] = mapped_column(String(16), default="train", server_default="train")


class JobPoint(Base):
    """One meta-training iteration of a job: its meta-loss and, where validation ran, the validation loss.
    The job's curves are read from these, so they outlive the page that watched them being drawn."""

    __tablename__ = "job_points"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    iteration: Mapped[int] = mapped_column(primary_key=True)
    meta_loss: Mapped[float | None] = mapped_column(Float)
    eval_loss: Mapped[float | None] = mapped_column(Float)
