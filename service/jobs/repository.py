"""Every database query about jobs. Functions take the caller's Session and only flush; the caller commits.

Each state change is one conditional UPDATE, so it is atomic on SQLite and PostgreSQL alike: a job is
claimed only while it is claimable, progress is written only by the lease owner, and a finished job is
never changed again. The boolean each returns says whether the row matched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, literal, or_, select, update
from sqlalchemy.orm import Session, undefer

from service.registry.models import Job, JobPoint, Optimizer, OptimizerVersion, utcnow

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)


@dataclass(frozen=True)
class Control:
    """What a running job checks between iterations."""

    state: str
    lease_owner: str | None
    cancel_requested: bool


@dataclass(frozen=True)
class Candidate:
    """A job a worker might run: queued, or running under a lease that may have lapsed."""

    id: str
    state: str
    lease_owner: str | None
    heartbeat_at: datetime | None
    created_at: datetime


def add_job(db: Session, job: Job) -> Job:
    db.add(job)
    db.flush()
    return job


def get_job(db: Session, job_id: str, *, with_resume: bool = False) -> Job | None:
    stmt = select(Job).where(Job.id == job_id)
    if with_resume:
        stmt = stmt.options(undefer(Job.resume_checkpoint))
    return db.scalars(stmt).one_or_none()


def list_jobs(db: Session, *, key_id: int | None = None, state: str | None = None, limit: int = 100) -> list[Job]:
    stmt = select(Job).order_by(Job.created_at.desc(), Job.id).limit(limit)
    if key_id is not None:
        stmt = stmt.where(Job.key_id == key_id)
    if state is not None:
        stmt = stmt.where(Job.state == state)
    return list(db.scalars(stmt))


def version_references(db: Session, version_ids: Iterable[int]) -> dict[int, str]:
    """`name:N` for each version id that still exists."""
    ids = sorted(set(version_ids))
    if not ids:
        return {}
    rows = db.execute(select(OptimizerVersion.id, Optimizer.name, OptimizerVersion.version)
                      .join(Optimizer, Optimizer.id == OptimizerVersion.optimizer_id)
                      .where(OptimizerVersion.id.in_(ids)))
    return {vid: f"{name}:{number}" for vid, name, number in rows}


def _set(db: Session, job_id: str, where: Sequence[Any], values: dict[str, Any]) -> bool:
    result = db.execute(update(Job).where(Job.id == job_id, *where).values(**values)
                        .execution_options(synchronize_session=False))
    return result.rowcount == 1


# --- submission and cancellation --------------------------------------------------------------------


def cancel_queued(db: Session, job_id: str) -> bool:
    """A queued job becomes cancelled at once: it never starts."""
    return _set(db, job_id, [Job.state == QUEUED], {
        "state": CANCELLED, "cancel_requested": True, "finished_at": utcnow(), "phase": None,
        "lease_owner": None, "heartbeat_at": None, "resume_checkpoint": None, "eta_s": None})


def request_cancel(db: Session, job_id: str) -> bool:
    """A running job is asked to stop; its runner sees the flag before its next iteration."""
    return _set(db, job_id, [Job.state == RUNNING], {"cancel_requested": True})


# --- running ----------------------------------------------------------------------------------------


def claim(db: Session, job_id: str, owner: str, *, stale_before: datetime | None, void_owner: str | None = None,
          takeover: bool = False) -> bool:
    """Take the lease: the job must be queued, or running under a lease that lapsed before `stale_before`
    (or whose owner, `void_owner`, is known to be gone), or running at all with `takeover`."""
    lapsed = [Job.lease_owner.is_(None)]
    if stale_before is not None:
        lapsed += [Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before]
    if void_owner is not None:
        lapsed.append(Job.lease_owner == void_owner)
    running = Job.state == RUNNING if takeover else and_(Job.state == RUNNING, or_(*lapsed))
    now = utcnow()
    return _set(db, job_id, [or_(Job.state == QUEUED, running)], {
        "state": RUNNING, "lease_owner": owner, "heartbeat_at": now, "attempts": Job.attempts + 1,
        "started_at": func.coalesce(Job.started_at, literal(now, Job.__table__.c.started_at.type)),
        "phase": "starting", "eta_s": None})


def heartbeat(db: Session, job_id: str, owner: str) -> bool:
    return _set(db, job_id, [Job.lease_owner == owner, Job.state == RUNNING], {"heartbeat_at": utcnow()})


def update_running(db: Session, job_id: str, owner: str, **values: Any) -> bool:
    """Progress, phase, resume checkpoint...: written only while `owner` holds the lease."""
    values.setdefault("heartbeat_at", utcnow())
    return _set(db, job_id, [Job.lease_owner == owner, Job.state == RUNNING], values)


def add_point(db: Session, job_id: str, iteration: int, meta_loss: float | None, eval_loss: float | None) -> None:
    db.add(JobPoint(job_id=job_id, iteration=iteration, meta_loss=meta_loss, eval_loss=eval_loss))
    db.flush()


def drop_points_after(db: Session, job_id: str, iteration: int) -> None:
    """Forget the iterations a resumed job will train again (those after its resume checkpoint)."""
    db.execute(delete(JobPoint).where(JobPoint.job_id == job_id, JobPoint.iteration > iteration))


def points(db: Session, job_id: str) -> list[JobPoint]:
    return list(db.scalars(select(JobPoint).where(JobPoint.job_id == job_id).order_by(JobPoint.iteration)))


def control(db: Session, job_id: str) -> Control | None:
    row = db.execute(select(Job.state, Job.lease_owner, Job.cancel_requested).where(Job.id == job_id)).one_or_none()
    return Control(*row) if row is not None else None


def release(db: Session, job_id: str, owner: str) -> bool:
    """Hand a running job back to the queue (its worker is shutting down); it resumes from its checkpoint.
    A handed-back start does not count against L2O_JOB_MAX_ATTEMPTS: that limit is for starts that crashed."""
    return _set(db, job_id, [Job.lease_owner == owner, Job.state == RUNNING], {
        "state": QUEUED, "lease_owner": None, "heartbeat_at": None, "phase": None, "eta_s": None,
        "attempts": Job.attempts - 1})


def finish(db: Session, job_id: str, owner: str, state: str, *, unless_cancelled: bool = False,
           **values: Any) -> bool:
    """End the job in `state` (succeeded, failed or cancelled) while `owner` holds its lease."""
    assert state in TERMINAL, state
    where = [Job.lease_owner == owner, Job.state == RUNNING]
    if unless_cancelled:
        where.append(Job.cancel_requested.is_(False))
    return _set(db, job_id, where, {
        "state": state, "finished_at": utcnow(), "lease_owner": None, "heartbeat_at": None, "phase": None,
        "eta_s": None, "resume_checkpoint": None, **values})


def candidates(db: Session, limit: int = 100) -> list[Candidate]:
    """Jobs that are queued or running, oldest first: a worker decides which of them it may claim."""
    rows = db.execute(select(Job.id, Job.state, Job.lease_owner, Job.heartbeat_at, Job.created_at)
                      .where(Job.state.in_((QUEUED, RUNNING))).order_by(Job.created_at, Job.id).limit(limit))
    return [Candidate(*row) for row in rows]
