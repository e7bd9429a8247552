"""Scale-out: two `l2o worker` processes on one PostgreSQL drain ten jobs; each job runs exactly once and
publishes exactly one version."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from service.registry.db import Database
from tests.jobs.conftest import tiny_spec, wait_for
from tests.jobs.test_recovery import make_job, read, versions_of, worker_process
from tests.record import record

N_JOBS = 10


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_workers_drain_ten_jobs_each_once(settings, tmp_path):
    jobs = [make_job(settings, tiny_spec(f"drained-{i}", training={"iterations": 2, "eval_every": 1}))
            for i in range(N_JOBS)]
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    procs = [worker_process(settings, log) for log in logs]
    # 51 s on a quiet machine; on 2 CPUs at load 11 over 180 s, mostly each worker's first fork of torch.
    try:
        wait_for(lambda: all(read(settings, j).state in ("succeeded", "failed", "cancelled") for j in jobs)
                 or any(p.poll() is not None for p in procs), timeout=420, what="both workers to drain the queue")
        assert all(p.poll() is None for p in procs), "\n".join(log.read_text() for log in logs)
        for p in procs:
            p.terminate()
        for p in procs:
            assert p.wait(timeout=30) == 0
    finally:
        for p in procs:
            p.kill()
            p.wait()
    rows = [read(settings, j) for j in jobs]
    db = Database(settings.db_url)
    try:
        with db.session() as s:  # procrastinate ran one task per job, once, and it succeeded
            tasks = s.execute(text("SELECT lock, status, attempts FROM procrastinate_jobs")).all()
            names = s.execute(text("SELECT o.name, count(v.id) FROM optimizers o JOIN optimizer_versions v "
                                   "ON v.optimizer_id = o.id GROUP BY o.name")).all()
    finally:
        db.dispose()
    record("scale_out:workers", workers=len(procs), jobs=N_JOBS,
           succeeded=sum(r.state == "succeeded" for r in rows), runs=sum(r.attempts for r in rows),
           versions=sum(versions_of(settings, j) for j in jobs), tasks=len(tasks),
           tasks_once=sum((t.status, t.attempts) == ("succeeded", 1) for t in tasks))
    assert [r.state for r in rows] == ["succeeded"] * N_JOBS, [r.error for r in rows]
    assert [r.attempts for r in rows] == [1] * N_JOBS  # claimed once each: nobody ran a job twice
    assert [versions_of(settings, j) for j in jobs] == [1] * N_JOBS
    assert sorted(t.lock for t in tasks) == sorted(jobs)
    assert {(t.status, t.attempts) for t in tasks} == {("succeeded", 1)}
    assert sorted(names) == sorted((f"drained-{i}", 1) for i in range(N_JOBS))
