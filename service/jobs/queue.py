"""The procrastinate executor: jobs dispatched through procrastinate, PostgreSQL's task queue, and run by
`l2o worker` processes on any machine that reaches the database. The API process only defers.

Each job is one procrastinate task with `lock` and `queueing_lock` set to the job's id, so procrastinate
never runs two tasks for one job at once and never queues two. A worker killed with kill -9 stops sending
its heartbeat; every worker sweeps now and then, and a task whose worker went quiet for the lease is put
back in the queue (procrastinate's stalled-job detection), then resumed from the job's last checkpoint.
The sweep also dispatches again a job no task will run (its dispatch was lost). A worker that is asked to
stop hands its job back: the task is retried at once, on whichever worker fetches it.

procrastinate's tables come from our Alembic migrations (migrations/versions/0003_procrastinate.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import anyio
import procrastinate
from procrastinate.exceptions import AlreadyEnqueued
from procrastinate.job_context import JobContext
from sqlalchemy import make_url

from service.jobs import lease
from service.jobs import repository as repo
from service.jobs.runner import Outcome, RunnerConfig, run_job
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


def conninfo(database_url: str) -> str:
    """The libpq URL for a SQLAlchemy `postgresql+psycopg://` URL (options such as search_path kept)."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise ValueError(f"the procrastinate executor needs PostgreSQL, not {url.get_backend_name()}: set "
                         "L2O_DATABASE_URL=postgresql+psycopg://... or L2O_JOB_EXECUTOR=embedded")
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def run_task(context: JobContext, job_id: str) -> str:
    runtime: WorkerRuntime = context.additional_context["runtime"]
    # The task may be a retry of one whose worker just died: wait out that worker's lease.
    outcome = run_job(job_id, runtime.db, runtime.config, should_interrupt=context.should_abort,
                      wait_for_lease_s=runtime.config.lease_s)
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

    quiet_since = utcnow() - timedelta(seconds=config.lease_s)
    orphans = []
    for c in await anyio.to_thread.run_sync(rows):
        if c.state == repo.QUEUED and c.created_at > quiet_since:
            continue  # just submitted: its dispatch may still be on its way
        if (c.state == repo.RUNNING and c.heartbeat_at is not None and c.heartbeat_at >= quiet_since
                and not lease.is_void(c.lease_owner)):
            continue  # its runner is alive
        orphans.append(c.id)
    if not orphans:
        return
    live = {t.lock for status in LIVE_STATUSES for t in await manager.list_jobs_async(task=TASK, status=status)}
    for job_id in orphans:
        if job_id not in live:
            log.warning("job %s: no task would run it; dispatching it again", job_id)
            await defer(app, job_id)


async def run_worker(database_url: str, db: Database, config: RunnerConfig, *, concurrency: int = 1,
                     poll_s: float = 1.0, burst: bool = False) -> None:
    """A procrastinate worker for our jobs. With `burst` it returns once the queue is empty."""
    app = make_app(database_url)
    async with app.open_async():
        await sweep(app, db, config)
        sweeper = None if burst else asyncio.create_task(_sweep_forever(app, db, config))
        try:
            await app.run_worker_async(
                queues=[QUEUE], concurrency=concurrency, wait=not burst,
                name=f"l2o-worker@{socket.gethostname()}:{os.getpid()}",
                additional_context={"runtime": WorkerRuntime(db, config)},
                update_heartbeat_interval=max(config.lease_s / 3, 0.1), stalled_worker_timeout=config.lease_s,
                fetch_job_polling_interval=poll_s,
                # On SIGTERM the running job is told to stop at its next iteration and is handed back.
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
