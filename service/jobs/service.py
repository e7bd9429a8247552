"""Jobs as the API sees them: submit, read, list, cancel. A job belongs to the key that submitted it; other
keys get 404 (not 403, which would say the job exists), and keys with the `admin` scope see every job.

Functions take the caller's Session and only flush; the handler commits, then asks the executor to run the
job (so a worker never looks for a row that is not committed yet).
"""

from __future__ import annotations

import pydantic
from sqlalchemy.orm import Session

from service.errors import JobFinished, JobNotFound, ValidationError
from service.jobs import price
from service.jobs import repository as repo
from service.jobs.spec import EvaluationJobSpec, EvaluationRequest, JobSpec
from service.lopt import OptimizerConfig
from service.registry import service as registry
from service.registry.models import Job, KeyGrant


def submit(db: Session, key: KeyGrant, spec: JobSpec, limits: price.JobLimits | None = None) -> Job:
    """Queue the job, once its spec is priced within `limits` (422 otherwise) and its key may publish its
    name (403 otherwise): a refused job changes nothing."""
    if limits is not None:
        price.check(spec, limits)
    registry.check_publisher(db, spec.name, registry.Publisher(key.id, key.has_scope("admin")))
    return repo.add_job(db, Job(key_id=key.id, spec=spec.model_dump(mode="json"), state=repo.QUEUED,
                                total_iterations=spec.training.iterations))


def submit_evaluation(db: Session, key: KeyGrant, name: str, number: int, request: EvaluationRequest,
                      limits: price.JobLimits | None = None) -> Job:
    """Queue an evaluation of version `number` of `name`, whose report becomes that version's evaluation.
    The key must be one that may edit the name (its creator's, or an admin's: 403 otherwise); the family
    defaults to the one the checkpoint was trained on (422 when it says none), and the job is priced like
    a training job's evaluation."""
    version = registry.get_version(db, name, number)
    registry.check_editor(db, version.optimizer, registry.Publisher(key.id, key.has_scope("admin")),
                          "evaluating its versions")
    try:
        spec = EvaluationJobSpec.of(name, number, version.config.get("trained_on"), request)
    except (ValueError, pydantic.ValidationError) as exc:
        message = exc.errors()[0]["msg"] if isinstance(exc, pydantic.ValidationError) else str(exc)
        raise ValidationError(f"invalid request: body.family: {message}", detail={"field": "family"}) from None
    if limits is not None:
        price.check_price(price.estimate_evaluation(spec, OptimizerConfig.from_dict(version.config)), limits)
    return repo.add_job(db, Job(key_id=key.id, kind="evaluate", spec=spec.model_dump(mode="json"),
                                state=repo.QUEUED, total_iterations=0))


def get(db: Session, key: KeyGrant, job_id: str) -> Job:
    job = repo.get_job(db, job_id)
    if job is None or not (key.has_scope("admin") or job.key_id == key.id):
        raise JobNotFound(f"no job {job_id!r}", detail={"id": job_id})
    return job


def list_jobs(db: Session, key: KeyGrant, *, state: str | None = None, limit: int = 100) -> list[Job]:
    if state is not None and state not in repo.STATES:
        raise ValidationError(f"unknown job state {state!r}: choose from {', '.join(repo.STATES)}",
                              detail={"state": state, "allowed": list(repo.STATES)})
    key_id = None if key.has_scope("admin") else key.id
    return repo.list_jobs(db, key_id=key_id, state=state, limit=limit)


def cancel(db: Session, key: KeyGrant, job_id: str) -> Job:
    """A queued job is cancelled at once; a running one is flagged and stops before its next iteration.
    Cancelling a cancelled job is a no-op; a job that already succeeded or failed cannot be cancelled."""
    job = get(db, key, job_id)
    if not (repo.cancel_queued(db, job_id) or repo.request_cancel(db, job_id)):
        db.refresh(job)
        if job.state in (repo.SUCCEEDED, repo.FAILED):
            raise JobFinished(f"job {job_id!r} already {job.state}; there is nothing to cancel",
                              detail={"id": job_id, "state": job.state})
    db.refresh(job)
    return job


def references(db: Session, jobs: list[Job]) -> dict[int, str]:
    """`name:N` of each job's published version."""
    return repo.version_references(db, [j.result_version_id for j in jobs if j.result_version_id is not None])
