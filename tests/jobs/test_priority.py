"""Job processes run at a lower CPU priority than the process that answers steps: a step is a user's
training loop waiting, a job is batch work (service/jobs/forkserver.py)."""

from __future__ import annotations

import os

from service.jobs import process


def _exit_with_niceness() -> None:
    os._exit(os.nice(0))


def test_a_job_process_runs_niced_below_the_server():
    child = process._CONTEXT.Process(target=_exit_with_niceness, name="l2o-niceness")
    child.start()
    child.join(60)
    assert child.exitcode == min(os.nice(0) + process.JOB_NICENESS, 19)
