"""Fixtures for the hostile-input tests: the app on SQLite with the memory store (the session and registry
suites cover the other backends), an optimizer version to open sessions on, and a session."""

from __future__ import annotations

import shutil
from typing import Any

import pytest
import torch

from service.config import Settings
from service.sessions import wire
from service.sessions.wire import StepMessage, WireFormat
from tests.conftest import checkpoint_bytes
from tests.sessions.conftest import redis_prefix  # noqa: F401  (a fixture: a Redis key prefix of the test's own)

SHAPES = {"layer.weight": [3, 2], "layer.bias": [3]}
ST_TYPE = {"Content-Type": wire.SAFETENSORS_TYPE}
OCTET_TYPE = {"Content-Type": "application/octet-stream"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_settings(tmp_path, sqlite_template, **overrides: Any) -> Settings:
    db = tmp_path / "l2o.db"
    shutil.copyfile(sqlite_template, db)
    (tmp_path / "pretrained").mkdir(exist_ok=True)
    values = dict(data_dir=tmp_path / "data", database_url=f"sqlite:///{db}", pretrained_dir=tmp_path / "pretrained",
                  session_store="memory", max_upload_bytes=1_000_000, step_max_body_bytes=100_000,
                  max_body_bytes=10_000)
    return Settings(**{**values, **overrides})


class HeldExecutor:
    """Takes jobs and runs none: the hostile tests submit jobs to see who may read them, not to train."""

    name = "held"

    async def start(self) -> None: ...

    async def dispatch(self, job_id: str) -> None: ...

    async def stop(self) -> None: ...


@pytest.fixture(autouse=True)
def held_jobs(monkeypatch):
    monkeypatch.setattr("service.jobs.lifespan.make_executor", lambda settings, db: HeldExecutor())


@pytest.fixture
def settings(tmp_path, sqlite_migrated) -> Settings:
    return make_settings(tmp_path, sqlite_migrated)


@pytest.fixture
def ckpt() -> bytes:
    return checkpoint_bytes(seed=3)


@pytest.fixture
def optimizer(client, admin_headers, ckpt) -> str:
    """`opt:1` registered; its reference."""
    r = client.post("/v1/optimizers/opt/versions", content=ckpt, headers={**admin_headers, **OCTET_TYPE})
    assert r.status_code == 201, r.text
    return "opt:1"


@pytest.fixture
def optimize_headers(make_key) -> dict[str, str]:
    return bearer(make_key("optimize", name="user"))


@pytest.fixture
def session_id(client, optimizer, optimize_headers) -> str:
    """A session of `optimize_headers`' key that has applied one step."""
    r = client.post("/v1/sessions", json={"optimizer": optimizer, "shapes": SHAPES}, headers=optimize_headers)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    r = client.post(f"/v1/sessions/{sid}/step", content=grads_body(0), headers={**optimize_headers, **ST_TYPE})
    assert r.status_code == 200, r.text
    return sid


def grads(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) for n, s in SHAPES.items()}


def grads_body(step: int, seed: int | None = None) -> bytes:
    return wire.encode(StepMessage(step, grads(step if seed is None else seed)), WireFormat.SAFETENSORS,
                       field="grads")
