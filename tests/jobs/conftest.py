"""Fixtures for the job tests: tiny specs, settings with short leases, and the workers each executor needs.

Every test that uses `settings` runs on both databases (see tests/conftest.py), and so on both executors:
SQLite runs jobs on the API's embedded thread, PostgreSQL through procrastinate, whose workers run here as
threads (the crash tests start real `l2o worker` processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service.config import Settings
from service.jobs import process, queue
from service.jobs.executor import executor_name
from service.jobs.process import ProcessConfig
from service.jobs.runner import RunnerConfig
from service.registry.db import Database

LEASE_S = 1.0
POLL_S = 0.05


def tiny_spec(name: str, **sections: dict[str, Any]) -> dict[str, Any]:
    """A job that meta-trains in well under a second: 3-d quadratics, a 4-unit LSTM, horizon 10 in unrolls of
    5, evaluated against two baselines tuned over two learning rates. `sections` update the defaults."""
    spec: dict[str, Any] = {
        "name": name,
        "family": {"name": "quadratic", "params": {"dim": 3}},
        "optimizer": {"hidden_size": 4, "num_layers": 1},
        "training": {"iterations": 6, "horizon": 10, "unroll": 5, "instances": 2, "eval_every": 3,
                     "eval_instances": 2, "resume_every": 2},
        "evaluation": {"instances": 3, "steps": 10, "tune_instances": 2, "lr_grid": [0.01, 0.1],
                       "baselines": ["sgd", "adam"]},
    }
    for section, values in sections.items():
        spec[section] = {**spec[section], **values} if isinstance(values, dict) and section != "family" else values
    return spec


# A spec that goes to NaN in its first iteration: a deep ReLU net whose weights jump by up to 9e5 a step.
DIVERGING = {"family": {"name": "mlp", "params": {"hidden_sizes": [4] * 8, "activation": "relu", "batch_size": 8}},
             "optimizer": {"hidden_size": 4, "num_layers": 1, "preprocess": "none", "output_scale": 9e5}}


@pytest.fixture(scope="session", autouse=True)
def job_forkserver() -> None:
    """Jobs run in processes forked from a forkserver whose imports take seconds (a minute on a loaded
    machine): paid once here, not inside the first test's deadlines."""
    process.warm_up(wait=True)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    (tmp_path / "pretrained").mkdir(exist_ok=True)
    return Settings(data_dir=tmp_path / "data", database_url=database_url, pretrained_dir=tmp_path / "pretrained",
                    job_lease_s=LEASE_S, job_poll_s=POLL_S, job_device="cpu", job_max_attempts=5)


@pytest.fixture
def executor(settings: Settings) -> str:
    return executor_name(settings)


@pytest.fixture
def train_headers(make_key) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key('train', name='trainer')}"}


class QueueWorkerThread:
    """A procrastinate worker (`l2o worker` minus the process) on a thread with its own event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings.db_url)
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Task | None = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="test-queue-worker")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.task = self.loop.create_task(queue.run_worker(
            self.settings.db_url, self.db, RunnerConfig.from_settings(self.settings),
            ProcessConfig.from_settings(self.settings), poll_s=POLL_S))
        self.ready.set()
        with contextlib.suppress(asyncio.CancelledError):
            self.loop.run_until_complete(self.task)
        self.loop.close()

    def start(self) -> QueueWorkerThread:
        self.thread.start()
        self.ready.wait()
        return self

    def stop(self) -> None:
        """Like SIGTERM: the running job is handed back at its next iteration, then the worker exits."""
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.task.cancel)
            self.thread.join(timeout=60)
            assert not self.thread.is_alive(), "the worker did not stop"
        self.db.dispose()


class Workers:
    """The job runners an executor needs besides the API process: none for the embedded executor (the app
    runs jobs itself), procrastinate workers for PostgreSQL."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.running: list[QueueWorkerThread] = []

    def start(self) -> None:
        if executor_name(self.settings) == "procrastinate":
            self.running.append(QueueWorkerThread(self.settings).start())

    def stop(self) -> None:
        while self.running:
            self.running.pop().stop()


@pytest.fixture
def workers(settings: Settings) -> Iterator[Workers]:
    pool = Workers(settings)
    yield pool
    pool.stop()


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "the condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def get_job(client, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/jobs/{job_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_state(client, headers, job_id: str, *states: str, timeout: float = 60.0) -> dict[str, Any]:
    return wait_for(lambda: (j := get_job(client, headers, job_id))["state"] in states and j,
                    timeout, f"job {job_id} to be {' or '.join(states)}")


def events(client, headers, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Every server-sent event of the job's stream, which ends when the job does."""
    out, event, data = [], "message", []
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif not line and data:
                out.append((event, json.loads("".join(data))))
                event, data = "message", []
    return out
