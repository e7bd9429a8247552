"""The procrastinate executor: jobs dispatched through procrastinate, PostgreSQL's task queue, and run by
`l2o worker` processes on any machine that reaches the database. The API process only defers.

Each job is one procrastinate task with `lock` and `queueing_lock` set to the job's id, so procrastinate
never runs two tasks for one job at once and never queues two: that lock, not a lease of ours, is what
lets a task take its job over (`run_job(takeover=True)`), whoever ran it last. Liveness is procrastinate's
own: each worker sends its heartbeat (every L2O_JOB_LEASE_S / 3); every worker sweeps now and then and puts
back in the queue the tasks of workers silent for L2O_JOB_LEASE_S (`get_stalled_jobs`, `retry_job`), and
the job resumes from its last resume checkpoint. The sweep also dispatches again a job no task will run
(its dispatch was lost). A worker that is asked to stop hands its job back within L2O_JOB_STOP_GRACE_S:
the task is retried at once, on whichever worker fetches it. The job itself runs in a child process of
the worker (process.py), under the memory cap.

procrastinate's tables come from our Alembic migrations (migrations/versions/0003_procrastinate.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass, replace
from datetime import timedelta

import anyio
import procrastinate
from procrastinate.exceptions import AlreadyEnqueued
from procrastinate.job_context import JobContext
from sqlalchemy import make_url

from service.jobs import repository as repo
from service.jobs.process import ProcessConfig, run_in_process, warm_up
from service.jobs.runner import Outcome, RunnerConfig
from service.registry.db import Database
from service.registry.models import utcnow

log = logging.getLogger(__name__)

TASK = "l2o.run_job"
QUEUE = "l2o-jobs"
LIVE_STATUSES = ("todo", "doing")


class JobInterrupted(Exception):
    """The worker is stopping and handed the job back; procrastinate queues the task again."""


@dataclass(frozen=True)
class WorkerRuntime:
    """What the task needs in a worker process, passed through procrastinate's job context."""

    db: Database
    config: RunnerConfig
    process: ProcessConfig


def conninfo(database_url: str) -> str:
    """The libpq URL for a SQLAlchemy `postgresql+psycopg://` URL (options such as search_path kept)."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise ValueError(f"the procrastinate executor needs PostgreSQL, not {url.get_backend_name()}: set "
                         "L2O_DATABASE_URL=postgresql+psycopg://... or L2O_JOB_EXECUTOR=embedded")
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def run_task(context: JobContext, job_id: str) -> str:
    runtime: WorkerRuntime = context.additional_context["runtime"]
    outcome = run_in_process(job_id, runtime.config, runtime.process, context.should_abort, takeover=True)
    if outcome is Outcome.INTERRUPTED:
        raise JobInterrupted(job_id)
    return outcome.value


def make_app(database_url: str) -> procrastinate.App:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo(database_url)))
    app.task(name=TASK, queue=QUEUE, pass_context=True,
             retry=procrastinate.RetryStrategy(max_attempts=1_000_000, retry_exceptions={JobInterrupted}))(run_task)
    return app


async def defer(app: procrastinate.App, job_id: str) -> None:
    try:
        await app.tasks[TASK].configure(lock=job_id, queueing_lock=job_id).defer_async(job_id=job_id)
    except AlreadyEnqueued:
        pass  # a task for this job is already waiting


async def sweep(app: procrastinate.App, db: Database, config: RunnerConfig) -> None:
    """Queue again the tasks of workers that went quiet, and dispatch again jobs no task will run."""
    manager = app.job_manager
    for task in await manager.get_stalled_jobs(seconds_since_heartbeat=config.lease_s, task_name=TASK):
        try:
            await manager.retry_job(task)
            log.warning("job %s: its worker stopped sending heartbeats; queued again", task.task_kwargs.get("job_id"))
        except Exception:
            log.debug("stalled task %s was already handled", task.id, exc_info=True)

    def rows() -> list[repo.Candidate]:
        with db.session() as s:
            return repo.candidates(s, limit=1000)

    # A job queued a moment ago may have its dispatch still on its way; any other unfinished job needs a task.
    quiet_since = utcnow() - timedelta(seconds=config.lease_s)
    orphans = [c.id for c in await anyio.to_thread.run_sync(rows)
               if c.state == repo.RUNNING or c.created_at <= quiet_since]
    if not orphans:
        return
    live = {t.lock for status in LIVE_STATUSES for t in await manager.list_jobs_async(task=TASK, status=status)}
    for job_id in orphans:
        if job_id not in live:
            log.warning("job %s: no task would run it; dispatching it again", job_id)
            await defer(app, job_id)


async def run_worker(database_url: str, db: Database, config: RunnerConfig, process: ProcessConfig, *,
                     concurrency: int = 1, poll_s: float = 1.0, burst: bool = False) -> None:
    """A procrastinate worker for our jobs. With `burst` it returns once the queue is empty."""
    config = replace(config, leases=False)
    await anyio.to_thread.run_sync(warm_up)
    app = make_app(database_url)
    async with app.open_async():
        await sweep(app, db, config)
        sweeper = None if burst else asyncio.create_task(_sweep_forever(app, db, config))
        try:
            await app.run_worker_async(
                queues=[QUEUE], concurrency=concurrency, wait=not burst,
                name=f"l2o-worker@{socket.gethostname()}:{os.getpid()}",
                additional_context={"runtime": WorkerRuntime(db, config, process)},
                update_heartbeat_interval=max(config.lease_s / 3, 0.1), stalled_worker_timeout=config.lease_s,
                fetch_job_polling_interval=poll_s,
                # On SIGTERM the running job is told to stop at once; its process hands it back within
                # L2O_JOB_STOP_GRACE_S or is killed, and the job is handed back for it.
                shutdown_graceful_timeout=0)
        finally:
            if sweeper is not None:
                sweeper.cancel()
                await asyncio.gather(sweeper, return_exceptions=True)


async def _sweep_forever(app: procrastinate.App, db: Database, config: RunnerConfig) -> None:
    while True:
        await asyncio.sleep(max(config.lease_s / 2, 0.2))
        try:
            await sweep(app, db, config)
        except Exception:
            log.exception("job sweep failed; trying again later")


class ProcrastinateExecutor:
    """The API side: defers each submitted job as a procrastinate task; workers run them."""

    name = "procrastinate"

    def __init__(self, database_url: str) -> None:
        self.app = make_app(database_url)

    async def start(self) -> None:
        await self.app.open_async()

    async def dispatch(self, job_id: str) -> None:
        await defer(self.app, job_id)

    async def stop(self) -> None:
        await self.app.close_async()
