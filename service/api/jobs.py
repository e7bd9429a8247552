"""Meta-training jobs over HTTP.

    POST /v1/jobs                 a job spec -> the queued job (scope `train`)
    GET  /v1/jobs                 the caller's jobs, newest first (every job for `admin` keys)
    GET  /v1/jobs/{id}            state, progress, error, the version it produced
    GET  /v1/jobs/{id}/curve      meta-loss and validation loss at every iteration trained so far
    GET  /v1/jobs/{id}/events     server-sent events: `progress` whenever the job changes, then `end`; a stream
                                  with no change for L2O_EVENTS_IDLE_TIMEOUT_S ends (reconnect); at most
                                  L2O_EVENTS_MAX_PER_KEY open per key, L2O_EVENTS_MAX_TOTAL in all, else 429
    POST /v1/jobs/{id}/cancel     a queued job never starts; a running one stops before its next iteration

Reading jobs needs the `train` or the `admin` scope; a job is visible to the key that submitted it and to
admin keys, and is a 404 to any other.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated

import anyio
from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from service.api.deps import DbSession, TrainKey
from service.api.job_schemas import JobCurve, JobOut, JobState
from service.api.streams import StreamSlot
from service.config import Settings
from service.jobs import repository as repo
from service.jobs import service as jobs
from service.jobs.executor import Executor
from service.jobs.price import JobLimits
from service.jobs.spec import JobSpec
from service.registry.db import Database
from service.registry.models import Job, KeyGrant

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

KEEPALIVE_S = 15.0


@router.post("", status_code=201)
async def submit(spec: JobSpec, request: Request, response: Response, db: DbSession, key: TrainKey) -> JobOut:
    return await queue(request, response, db, lambda limits: jobs.submit(db, key, spec, limits))


async def queue(request: Request, response: Response, db: Session, submit: Callable[[JobLimits], Job]) -> JobOut:
    """Commit the job `submit` makes under the server's limits, hand it to the executor, and answer it
    with its Location: what every route that queues a job does."""
    limits = JobLimits.from_settings(request.app.state.settings)

    def create() -> JobOut:
        job = submit(limits)
        db.commit()
        return JobOut.of(job)

    out = await run_in_threadpool(create)
    executor: Executor = request.app.state.jobs
    try:
        await executor.dispatch(out.id)
    except Exception:
        # The job is committed; a worker's sweep dispatches it again (procrastinate), or finds it (embedded).
        log.exception("job %s: dispatch failed; it will be picked up by the next sweep", out.id)
    response.headers["Location"] = f"/v1/jobs/{out.id}"
    return out


@router.get("")
def list_jobs(db: DbSession, key: TrainKey, state: JobState | None = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[JobOut]:
    rows = jobs.list_jobs(db, key, state=state, limit=limit)
    refs = jobs.references(db, rows)
    return [JobOut.of(j, refs.get(j.result_version_id)) for j in rows]


@router.get("/{job_id}")
def get_job(job_id: str, db: DbSession, key: TrainKey) -> JobOut:
    return _out(db, jobs.get(db, key, job_id))


@router.get("/{job_id}/curve")
def job_curve(job_id: str, db: DbSession, key: TrainKey) -> JobCurve:
    jobs.get(db, key, job_id)
    return JobCurve.of(repo.points(db, job_id))


@router.post("/{job_id}/cancel")
def cancel_job(job_id: str, db: DbSession, key: TrainKey) -> JobOut:
    job = jobs.cancel(db, key, job_id)
    db.commit()
    return _out(db, job)


@router.get("/{job_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "`event: progress` with the job (JSON) each time it changes, then "
                                            "`event: end` with the finished job"}})
def job_events(job_id: str, request: Request, db: DbSession, key: TrainKey) -> StreamingResponse:
    jobs.get(db, key, job_id)  # 404 before the stream starts
    db.close()  # the stream reads with sessions of its own; do not hold a connection for its lifetime
    settings: Settings = request.app.state.settings
    slot = request.app.state.event_streams.take(str(key.id))   # 429 when the key or the server has enough
    stream = slot.bind(_events(request, request.app.state.db, key, job_id, settings.job_poll_s,
                               settings.events_idle_timeout_s, slot))
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _events(request: Request, db: Database, key: KeyGrant, job_id: str, poll_s: float, idle_s: float,
                  slot: StreamSlot) -> AsyncIterator[str]:
    """Events until the job ends, or until nothing changed for `idle_s` (the client reconnects, as
    server-sent-event clients do)."""
    def read() -> JobOut:
        with db.session() as s:
            return _out(s, jobs.get(s, key, job_id))

    try:
        last, quiet, idle = None, 0.0, 0.0
        while True:
            out = await anyio.to_thread.run_sync(read)
            data = out.model_dump(mode="json")
            changed = {k: v for k, v in data.items() if k != "spec"}
            if out.state in repo.TERMINAL:
                yield _event("end", data, out.progress.iteration)
                return
            if changed != last:
                yield _event("progress", data, out.progress.iteration)
                last, quiet, idle = changed, 0.0, 0.0
            elif idle >= idle_s:
                return
            elif quiet >= KEEPALIVE_S:
                yield ": keep-alive\n\n"  # a comment line: keeps proxies from closing an idle stream
                quiet = 0.0
            if await request.is_disconnected():
                return
            await anyio.sleep(poll_s)
            quiet += poll_s
            idle += poll_s
    finally:
        slot.release()


def _event(name: str, data: dict, event_id: int) -> str:
    return f"event: {name}\nid: {event_id}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _out(db: Session, job: Job) -> JobOut:
    ref = jobs.references(db, [job]).get(job.result_version_id) if job.result_version_id is not None else None
    return JobOut.of(job, ref)
