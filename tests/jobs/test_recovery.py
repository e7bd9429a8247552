"""Crash safety, on both executors: a worker killed with SIGKILL has its job resumed from the last resume
checkpoint; a worker that is stopped hands its job back; one runner holds a job at a time; a finished job
never runs again."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select, update

from service.config import Settings
from service.jobs import lease, queue
from service.jobs import repository as repo
from service.jobs import service as jobs_service
from service.jobs.embedded import EmbeddedExecutor, PollingWorker
from service.jobs.executor import executor_name
from service.jobs.process import ProcessConfig
from service.jobs.runner import Outcome, RunnerConfig, run_job
from service.jobs.spec import JobSpec
from service.metatrain import ResumeCheckpoint
from service.registry import keys
from service.registry.db import Database
from service.registry.models import Job, OptimizerVersion, utcnow
from tests.jobs.conftest import LEASE_S, POLL_S, QueueWorkerThread, tiny_spec, wait_for

REPO = Path(__file__).resolve().parents[2]


def make_job(settings: Settings, spec: dict, *, dispatch: bool = True) -> str:
    """Submit a job as the API does (row committed, then dispatched), without an API process."""
    db = Database(settings.db_url)
    with db.session() as s:
        key, _ = keys.create_key(s, "trainer", ["train"])
        job = jobs_service.submit(s, key, JobSpec.model_validate(spec))
        s.commit()
    db.dispose()
    if dispatch and executor_name(settings) == "procrastinate":
        async def defer() -> None:
            app = queue.make_app(settings.db_url)
            async with app.open_async():
                await queue.defer(app, job.id)

        asyncio.run(defer())
    return job.id


def read(settings: Settings, job_id: str) -> Job:
    db = Database(settings.db_url)
    with db.session() as s:
        job = repo.get_job(s, job_id, with_resume=True)
    db.dispose()
    return job


def versions_of(settings: Settings, job_id: str) -> int:
    db = Database(settings.db_url)
    with db.session() as s:
        count = s.scalar(select(func.count()).select_from(OptimizerVersion).where(OptimizerVersion.job_id == job_id))
    db.dispose()
    return count


def run_burst(settings: Settings) -> None:
    """A worker that runs whatever it can take now, then returns."""
    db = Database(settings.db_url)
    config = RunnerConfig.from_settings(settings)
    try:
        if executor_name(settings) == "procrastinate":
            asyncio.run(queue.run_worker(settings.db_url, db, config, ProcessConfig.from_settings(settings),
                                         poll_s=POLL_S, burst=True))
        else:
            PollingWorker(db, config, ProcessConfig.from_settings(settings), POLL_S).run(threading.Event(), burst=True)
    finally:
        db.dispose()


def worker_process(settings: Settings, log: Path) -> subprocess.Popen:
    """A real `l2o worker` process on the test database."""
    env = {**os.environ, "L2O_DATABASE_URL": settings.db_url, "L2O_DATA_DIR": str(settings.data_dir),
           "L2O_JOB_LEASE_S": str(LEASE_S), "L2O_JOB_POLL_S": str(POLL_S), "L2O_JOB_DEVICE": "cpu",
           "L2O_LOG_LEVEL": "info"}
    command = "import sys; from service.cli import main; sys.exit(main(['worker']))"
    return subprocess.Popen([sys.executable, "-c", command], cwd=REPO, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)


ITERATIONS = 200


def test_killed_worker_resumes_from_its_checkpoint(settings, tmp_path):
    # Long enough that the job is still running when this test sees its first checkpoint, however fast
    # the machine trains: 40 iterations once finished between two looks.
    job_id = make_job(settings, tiny_spec("survivor", training={"iterations": ITERATIONS, "resume_every": 4,
                                                                "eval_every": 50}))
    log = tmp_path / "worker.log"
    proc = worker_process(settings, log)
    try:
        wait_for(lambda: read(settings, job_id).resume_checkpoint is not None or proc.poll() is not None,
                 timeout=120, what="the worker's first resume checkpoint")
        assert proc.poll() is None, f"the worker exited early:\n{log.read_text()}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()

    killed = read(settings, job_id)
    # The job ran in a process of its own, which follows its killed worker out (its lifeline reads EOF).
    assert killed.state == "running" and lease.pid_of(killed.lease_owner) not in (None, proc.pid), log.read_text()
    wait_for(lambda: lease.is_void(killed.lease_owner), timeout=10, what="the job's process to exit")
    at = ResumeCheckpoint.from_bytes(killed.resume_checkpoint).iteration
    assert 0 < at < ITERATIONS and at % 4 == 0 and killed.iteration >= at

    # A worker started after the crash takes the job over (procrastinate once the dead worker's heartbeat is
    # overdue) and resumes it where the checkpoint left it.
    wait_for(lambda: run_burst(settings) or read(settings, job_id).state != "running", timeout=60,
             what="a new worker to take the job over")
    done = read(settings, job_id)
    assert done.state == "succeeded", done.error
    assert done.resumed_from == at and done.attempts == 2 and done.iteration == ITERATIONS
    assert done.resume_checkpoint is None and done.lease_owner is None
    assert versions_of(settings, job_id) == 1
    # The curve has each iteration once: those the killed worker trained past its checkpoint were dropped
    # and trained again.
    db = Database(settings.db_url)
    try:
        with db.session() as s:
            points = repo.points(s, job_id)
    finally:
        db.dispose()
    assert [p.iteration for p in points] == list(range(1, ITERATIONS + 1))
    assert [p.iteration for p in points if p.eval_loss is not None] == [50, 100, 150, 200]


class Runner:
    """The thing that runs jobs for an executor, started and stopped like a process would be."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        if executor_name(settings) == "procrastinate":
            self.queue_worker = QueueWorkerThread(settings).start()
        else:
            self.db = Database(settings.db_url)
            self.embedded = EmbeddedExecutor(self.db, RunnerConfig.from_settings(settings),
                                             ProcessConfig.from_settings(settings), POLL_S)
            asyncio.run(self.embedded.start())

    def stop(self) -> None:
        if executor_name(self.settings) == "procrastinate":
            self.queue_worker.stop()
        else:
            asyncio.run(self.embedded.stop())
            self.db.dispose()


def test_a_stopping_worker_hands_its_job_back(settings):
    job_id = make_job(settings, tiny_spec("handoff", training={"iterations": 5000, "resume_every": 3,
                                                               "eval_every": 1000}))
    first = Runner(settings)
    try:
        wait_for(lambda: (j := read(settings, job_id)).resume_checkpoint is not None and j.iteration > 3,
                 what="the first worker's progress")
    finally:
        first.stop()
    handed = read(settings, job_id)
    assert handed.state == "queued" and handed.lease_owner is None and handed.phase is None
    at = ResumeCheckpoint.from_bytes(handed.resume_checkpoint).iteration
    # Checkpointed where it stopped, not at the last multiple of resume_every: no finished iteration is lost.
    assert at == handed.iteration > 3 and handed.attempts == 0  # a hand-back is not a failed attempt

    second = Runner(settings)
    try:
        resumed = wait_for(lambda: (j := read(settings, job_id)).resumed_from is not None and j,
                           what="the second worker to resume the job")
        assert resumed.resumed_from == at and resumed.attempts == 1 and resumed.state == "running"
        db = Database(settings.db_url)
        with db.session() as s:
            assert repo.request_cancel(s, job_id)
            s.commit()
        db.dispose()
        wait_for(lambda: read(settings, job_id).state == "cancelled", what="the job to stop")
    finally:
        second.stop()
    assert versions_of(settings, job_id) == 0


def test_one_runner_at_a_time_and_a_finished_job_never_runs_again(settings):
    job_id = make_job(settings, tiny_spec("once"))
    db = Database(settings.db_url)
    config = RunnerConfig.from_settings(settings)
    outcomes: list[Outcome] = []
    threads = [threading.Thread(target=lambda: outcomes.append(run_job(job_id, db, config))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == [Outcome.SKIPPED, Outcome.SUCCEEDED]
    assert run_job(job_id, db, config) is Outcome.SKIPPED
    job = read(settings, job_id)
    assert job.state == "succeeded" and job.attempts == 1
    assert versions_of(settings, job_id) == 1
    db.dispose()


def test_a_runner_that_lost_its_lease_changes_nothing(settings):
    job_id = make_job(settings, tiny_spec("taken-over"))
    db = Database(settings.db_url)
    config = RunnerConfig.from_settings(settings)
    ghost = "elsewhere/4242/cafe0000/another-machine"  # a runner on another machine: only its heartbeat counts
    with db.session() as s:
        assert repo.claim(s, job_id, ghost, stale_before=utcnow() - timedelta(seconds=LEASE_S))
        s.commit()
    assert run_job(job_id, db, config) is Outcome.SKIPPED  # its lease is fresh

    with db.session() as s:  # its heartbeat lapses
        s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=2 * LEASE_S)))
        s.commit()
    assert run_job(job_id, db, config) is Outcome.SUCCEEDED
    with db.session() as s:
        assert not repo.update_running(s, job_id, ghost, iteration=1)
        assert not repo.finish(s, job_id, ghost, repo.FAILED, error="too late")
        s.commit()
    job = read(settings, job_id)
    assert job.state == "succeeded" and job.error is None and versions_of(settings, job_id) == 1
    db.dispose()


def test_a_job_that_keeps_crashing_is_given_up(settings):
    job_id = make_job(settings, tiny_spec("crashes"))
    db = Database(settings.db_url)
    with db.session() as s:  # five starts, each ended by a crash
        s.execute(update(Job).where(Job.id == job_id).values(
            state="running", attempts=settings.job_max_attempts, lease_owner="elsewhere/1/0/x",
            heartbeat_at=utcnow() - timedelta(seconds=2 * LEASE_S)))
        s.commit()
    assert run_job(job_id, db, RunnerConfig.from_settings(settings)) is Outcome.FAILED
    job = read(settings, job_id)
    assert job.state == "failed" and "gave up after 5 starts" in job.error and "L2O_JOB_MAX_ATTEMPTS" in job.error
    assert versions_of(settings, job_id) == 0
    db.dispose()


def test_a_job_whose_dispatch_was_lost_still_runs(settings):
    job_id = make_job(settings, tiny_spec("orphan", training={"iterations": 2, "eval_every": 1}), dispatch=False)
    db = Database(settings.db_url)
    with db.session() as s:  # submitted a while ago; the API died before it dispatched the job
        s.execute(update(Job).where(Job.id == job_id).values(created_at=utcnow() - timedelta(seconds=2 * LEASE_S)))
        s.commit()
    db.dispose()
    run_burst(settings)  # a worker's sweep finds it (procrastinate) or its loop does (embedded)
    job = read(settings, job_id)
    assert job.state == "succeeded" and job.attempts == 1 and versions_of(settings, job_id) == 1
