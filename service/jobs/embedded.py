"""The embedded executor: jobs found in the job table and run one at a time, each in a process of its own.

The default with SQLite. The API process only supervises: a background thread looks for runnable jobs and
starts a job process for each (process.py), so a job's memory never counts against the API's and a job
that runs out of it fails alone. The same loop serves `l2o worker` when the executor is `embedded`. On
start it resumes the jobs left `running` by a process that died: on the same machine at once (their owner
process is gone), elsewhere once their lease lapses.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import anyio

from service.jobs import lease
from service.jobs import repository as repo
from service.jobs.process import ProcessConfig, run_in_process, warm_up
from service.jobs.runner import RunnerConfig
from service.registry.db import Database
from service.registry.models import utcnow

log = logging.getLogger(__name__)


class PollingWorker:
    """Looks for runnable jobs and runs them, one at a time, until told to stop."""

    def __init__(self, db: Database, config: RunnerConfig, process: ProcessConfig, poll_s: float) -> None:
        self.db, self.config, self.process, self.poll_s = db, config, process, poll_s

    def next_job(self) -> str | None:
        """A job this worker may claim: first one to resume (its runner is gone), else the oldest queued."""
        with self.db.session() as s:
            candidates = repo.candidates(s)
        stale_before = utcnow() - timedelta(seconds=self.config.lease_s)
        for c in candidates:
            if c.state == repo.RUNNING and (c.heartbeat_at is None or c.heartbeat_at < stale_before
                                            or lease.is_void(c.lease_owner)):
                return c.id
        return next((c.id for c in candidates if c.state == repo.QUEUED), None)

    def run(self, stop: threading.Event, wake: threading.Event | None = None, *, burst: bool = False) -> None:
        """Run jobs until `stop` is set (the running one is handed back, within the stop grace); with
        `burst`, return as soon as there is nothing left to run."""
        wake = wake or threading.Event()
        warm_up()
        while not stop.is_set():
            try:
                job_id = self.next_job()
                if job_id is not None:
                    run_in_process(job_id, self.config, self.process, stop.is_set)
                    continue
            except Exception:
                log.exception("job worker: unexpected error; retrying in %.1f s", self.poll_s)
            if burst:
                return
            wake.wait(self.poll_s)
            wake.clear()


class EmbeddedExecutor:
    """Supervises job processes from one background thread of the API process."""

    name = "embedded"

    def __init__(self, db: Database, config: RunnerConfig, process: ProcessConfig, poll_s: float) -> None:
        self.worker = PollingWorker(db, config, process, poll_s)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        self._thread = threading.Thread(target=self.worker.run, args=(self._stop, self._wake), daemon=True,
                                        name="l2o-jobs")
        self._thread.start()

    async def dispatch(self, job_id: str) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Hand the running job back (it resumes from its checkpoint on the next start) and wait for the thread:
        at most L2O_JOB_STOP_GRACE_S, after which its process is killed."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            await anyio.to_thread.run_sync(self._thread.join)
