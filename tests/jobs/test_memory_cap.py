"""A job runs in a process of its own under an address-space cap: a job that needs more ends `failed`
saying it ran out of memory, and the API process and its sessions live on."""

from __future__ import annotations

import os

import pytest

from service.config import Settings
from service.jobs.process import run_in_process
from tests.conftest import checkpoint_bytes
from tests.jobs.conftest import tiny_spec, wait_for
from tests.jobs.test_recovery import make_job, read
from tests.record import record

CAP = 2 * 1024**3
# About 12 GiB by the estimate: submitted before the limits were lowered (the API would refuse it now).
GREEDY = tiny_spec("greedy", family={"name": "mlp", "params": {"hidden_sizes": [256], "batch_size": 64}},
                   optimizer={"hidden_size": 20, "num_layers": 2},
                   training={"instances": 16, "horizon": 20, "unroll": 20})


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.job_max_memory_bytes = CAP
    return settings


def test_a_job_past_the_memory_cap_fails_and_the_api_lives_on(settings, client, make_key, train_headers, workers):
    admin = {"Authorization": f"Bearer {make_key('admin')}"}
    assert client.post("/v1/optimizers/held/versions", content=checkpoint_bytes(),
                       headers={**admin, "Content-Type": "application/octet-stream"}).status_code == 201
    session = client.post("/v1/sessions", json={"optimizer": "held", "shapes": {"w": [3]}}, headers=admin).json()

    def step(n: int) -> int:
        return client.post(f"/v1/sessions/{session['id']}/step", json={"step": n, "grads": {"w": [1.0, 2.0, 3.0]}},
                           headers=admin).status_code

    assert step(0) == 200
    job_id = make_job(settings, GREEDY)
    workers.start()
    wait_for(lambda: read(settings, job_id).state in ("failed", "succeeded", "cancelled"), timeout=120,
             what="the greedy job to end")
    job = read(settings, job_id)
    assert job.state == "failed" and "memory" in job.error and "L2O_JOB_MAX_MEMORY_BYTES" in job.error, job.error
    # The API process (this one) answers as before, and its session carries on where it was.
    health, after = client.get("/healthz").status_code, step(1)
    assert health == 200 and after == 200
    record("jobs:memory_cap", cap_bytes=CAP, state=job.state, error=job.error.split(".")[0], healthz=health,
           step_after=after)
    assert client.get(f"/v1/jobs/{job_id}", headers=admin).json()["state"] == "failed"
    assert client.post("/v1/jobs", json=tiny_spec("next"), headers=train_headers).status_code == 201


def test_the_job_runs_in_another_process(settings):
    # Long enough (a few seconds) that the supervisor, polling every 0.2 s, sees the job holding its lease.
    spec = tiny_spec("elsewhere", training={"iterations": 120, "resume_every": 40})
    job_id = make_job(settings, spec, dispatch=False)
    seen: list[str] = []

    def look() -> bool:  # the supervisor's should_stop, asked while the job runs
        owner = read(settings, job_id).lease_owner
        if owner:
            seen.append(owner)
        return False

    from service.jobs.process import ProcessConfig
    from service.jobs.runner import RunnerConfig

    outcome = run_in_process(job_id, RunnerConfig.from_settings(settings), ProcessConfig.from_settings(settings), look)
    assert outcome.value == "succeeded"
    assert seen and all(owner.split("/")[1] != str(os.getpid()) for owner in seen)
