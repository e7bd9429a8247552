"""Cancel and shutdown are bounded in every phase of a job, on both executors: a cancel takes effect within
5 s whether the job is training (even inside one long iteration), evaluating or publishing; SIGTERM of
`l2o worker` or `l2o serve` ends the process within 15 s, the running job handed back to the queue with its
resume checkpoint (and, for `l2o serve`, the memory store's sessions saved)."""

from __future__ import annotations

import os
import time

import httpx
import pytest

from service.metatrain import ResumeCheckpoint
from service.registry.db import Database
from tests.jobs.conftest import LEASE_S, POLL_S, get_job, tiny_spec, wait_for, wait_for_state
from tests.jobs.test_recovery import make_job, read, versions_of, worker_process
from tests.live_server import ServeProcess, free_port
from tests.record import record

CANCEL_S = 5.0
SHUTDOWN_S = 15.0

# One iteration runs 1,000 unrolls: tens of seconds, so a cancel must not wait for its end.
LONG_ITERATION = {"training": {"iterations": 2, "horizon": 50_000, "unroll": 50, "eval_every": 2,
                               "resume_every": 1}}
# One iteration of training (checkpointed at its end), then an evaluation of tens of seconds.
LONG_EVALUATION = {"training": {"iterations": 1, "eval_every": 1, "resume_every": 5},
                   "evaluation": {"steps": 100_000}}
PHASES = {"training": LONG_ITERATION, "evaluating": LONG_EVALUATION}


def submit(client, headers, spec) -> str:
    response = client.post("/v1/jobs", json=spec, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def cancel_within_bound(client, headers, job_id: str, phase: str) -> dict:
    began = time.monotonic()
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=headers).status_code == 200
    done = wait_for_state(client, headers, job_id, "cancelled", "succeeded", "failed", timeout=CANCEL_S)
    record("stop:cancel", phase=phase, seconds=round(time.monotonic() - began, 2), state=done["state"])
    return done


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_a_cancel_takes_effect_within_5_s_in_each_phase(client, train_headers, workers, phase):
    job_id = submit(client, train_headers, tiny_spec(f"cancel-{phase}", **PHASES[phase]))
    workers.start()
    wait_for(lambda: get_job(client, train_headers, job_id)["progress"]["phase"] == phase, timeout=60,
             what=f"the job to be {phase}")
    done = cancel_within_bound(client, train_headers, job_id, phase)
    assert done["state"] == "cancelled" and done["result"] is None
    assert versions_of_name(client, train_headers, f"cancel-{phase}") == 0


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # SQLite's write lock would stop the cancel too
def test_a_cancel_takes_effect_within_5_s_while_publishing(client, train_headers, workers, settings):
    job_id = submit(client, train_headers, tiny_spec("cancel-publishing", training={"iterations": 2,
                                                                                    "eval_every": 1}))
    db = Database(settings.db_url)
    try:
        with db.session() as s:  # publishing waits on this lock, as it would on a slow database
            s.connection().exec_driver_sql("LOCK TABLE optimizers IN EXCLUSIVE MODE")
            workers.start()
            wait_for(lambda: get_job(client, train_headers, job_id)["progress"]["phase"] == "publishing",
                     timeout=60, what="the job to be publishing")
            done = cancel_within_bound(client, train_headers, job_id, "publishing")
            s.rollback()
    finally:
        db.dispose()
    assert done["state"] == "cancelled" and done["result"] is None
    assert versions_of_name(client, train_headers, "cancel-publishing") == 0


def versions_of_name(client, headers, name: str) -> int:
    response = client.get(f"/v1/optimizers/{name}", headers=headers)
    return 0 if response.status_code == 404 else len(response.json()["versions"])


# Evaluation is the phase that checks nothing between its rollouts; training's hand-back is
# test_recovery.py's test_a_stopping_worker_hands_its_job_back, and both phases are bounded for a cancel above.
@pytest.mark.parametrize("phase", ["evaluating"])
def test_sigterm_stops_a_worker_within_15_s_handing_its_job_back(settings, tmp_path, phase):
    job_id = make_job(settings, tiny_spec(f"term-{phase}", **PHASES[phase]))
    log = tmp_path / "worker.log"
    proc = worker_process(settings, log)
    try:
        wait_for(lambda: read(settings, job_id).phase == phase or proc.poll() is not None, timeout=90,
                 what=f"the job to be {phase}")
        assert proc.poll() is None, log.read_text()
        proc.terminate()
        began = time.monotonic()
        assert proc.wait(timeout=SHUTDOWN_S) == 0, log.read_text()
        stopped_s = time.monotonic() - began
        assert stopped_s < SHUTDOWN_S
    finally:
        proc.kill()
        proc.wait()
    handed = read(settings, job_id)
    assert handed.state == "queued" and handed.lease_owner is None, log.read_text()
    if phase == "evaluating":  # its training was checkpointed: a new worker evaluates without training again
        assert ResumeCheckpoint.from_bytes(handed.resume_checkpoint).iteration == handed.total_iterations
    assert versions_of(settings, job_id) == 0
    record("stop:sigterm", process="l2o worker", phase=phase, seconds=round(stopped_s, 2), handed_back=True)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the embedded default: the server runs jobs
def test_sigterm_stops_serve_within_15_s_saving_sessions_and_handing_the_job_back(settings, tmp_path):
    data = tmp_path / "serve-data"
    env = {**os.environ, "L2O_DATA_DIR": str(data), "L2O_JOB_LEASE_S": str(LEASE_S), "L2O_JOB_POLL_S": str(POLL_S),
           "L2O_JOB_DEVICE": "cpu", "L2O_SESSION_STORE": "memory"}
    env.pop("L2O_DATABASE_URL", None)
    server = ServeProcess(env, free_port(), tmp_path / "serve.log").start()
    try:
        headers = {"Authorization": f"Bearer {(data / 'admin.key').read_text().strip()}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
            session = http.post("/v1/sessions", json={"optimizer": "quadratic-lstm", "shapes": {"w": [3]}})
            assert session.status_code == 201, session.text
            job = http.post("/v1/jobs", json=tiny_spec("term-serve", **LONG_EVALUATION))
            assert job.status_code == 201, job.text
            job_id = job.json()["id"]
            wait_for(lambda: http.get(f"/v1/jobs/{job_id}").json()["progress"]["phase"] == "evaluating",
                     timeout=90, what="the job to be evaluating")
        began = time.monotonic()
        server.terminate(timeout=SHUTDOWN_S)
        stopped_s = time.monotonic() - began
        assert stopped_s < SHUTDOWN_S
    finally:
        server.kill()
    log = (tmp_path / "serve.log").read_text()
    assert (data / "sessions.safetensors").exists(), log  # the memory store's snapshot, written after the jobs stopped
    db = Database(f"sqlite:///{data / 'l2o.db'}")
    try:
        with db.session() as s:
            from service.jobs import repository as repo

            job = repo.get_job(s, job_id, with_resume=True)
            assert job.state == "queued" and job.resume_checkpoint is not None, log
    finally:
        db.dispose()
    record("stop:sigterm", process="l2o serve", phase="evaluating", seconds=round(stopped_s, 2), handed_back=True,
           sessions_saved=True)
