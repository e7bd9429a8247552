"""`l2o worker`: a process that runs meta-training jobs.

With PostgreSQL (the procrastinate executor) run as many as you like, on any machines that reach the
database. With the embedded executor it runs the same loop the API process runs, beside it. Either way
each job runs in a child process (process.py); SIGTERM hands the running jobs back within
L2O_JOB_STOP_GRACE_S.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading

from service.config import Settings
from service.jobs.embedded import PollingWorker
from service.jobs.executor import executor_name
from service.jobs.process import ProcessConfig
from service.jobs.runner import RunnerConfig
from service.registry import migrate
from service.registry.db import Database

log = logging.getLogger(__name__)


def run_worker(settings: Settings, *, concurrency: int | None = None, burst: bool = False) -> None:
    """Run jobs until SIGINT/SIGTERM (the running jobs are handed back), or with `burst` until none is left."""
    concurrency = concurrency or settings.worker_concurrency
    config = RunnerConfig.from_settings(settings)
    process = ProcessConfig.from_settings(settings)
    db = Database(settings.db_url)
    try:
        migrate.check_at_head(db.engine)  # refuses a database behind the code, naming the fix
        name = executor_name(settings)
        log.info("l2o worker: %s executor, %d at a time, device %s", name, concurrency, config.device)
        if name == "procrastinate":
            from service.jobs.queue import run_worker as run_queue_worker

            asyncio.run(run_queue_worker(settings.db_url, db, config, process, concurrency=concurrency,
                                         poll_s=settings.job_poll_s, burst=burst))
        else:
            _run_polling(PollingWorker(db, config, process, settings.job_poll_s), concurrency, burst)
    finally:
        db.dispose()


def _run_polling(worker: PollingWorker, concurrency: int, burst: bool) -> None:
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    threads = [threading.Thread(target=worker.run, args=(stop,), kwargs={"burst": burst}, name=f"l2o-worker-{i}")
               for i in range(concurrency)]
    for t in threads:
        t.start()
    # Join with a timeout so the main thread keeps handling signals.
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=0.5)
