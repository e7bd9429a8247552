"""Fixtures for the session tests: every store implementation, Redis for real on 127.0.0.1."""

from __future__ import annotations

import os
import uuid

import pytest
import torch

from service.sessions.memory_store import MemoryStore
from service.sessions.redis_store import RedisStore
from service.sessions.store import SessionStore
from tests.conftest import checkpoint_bytes

REDIS_URL = os.environ.get("L2O_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_client():
    """A client for the test Redis, or a skip (a failure under CI=true) when it is unreachable."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"Redis at {REDIS_URL} is unreachable and CI=true: {exc}")
        pytest.skip(f"Redis at {REDIS_URL} is unreachable: {exc}")
    return client


@pytest.fixture
def redis_prefix():
    """A key prefix no other test run uses; its keys are deleted afterwards."""
    client = redis_client()
    prefix = f"l2o-test:{uuid.uuid4().hex}:"
    yield prefix
    for key in client.scan_iter(match=prefix + "*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture(params=["memory", "redis"])
def store(request, tmp_path) -> SessionStore:
    if request.param == "memory":
        s: SessionStore = MemoryStore(snapshot=tmp_path / "sessions.safetensors")
    else:
        prefix = request.getfixturevalue("redis_prefix")
        s = RedisStore.from_url(REDIS_URL, prefix=prefix)
    s.open()
    yield s
    s.close()


@pytest.fixture(params=["memory", "redis"])
def settings(request, tmp_path):
    """The app's settings for the HTTP tests: SQLite (the registry tests cover PostgreSQL), each store."""
    import shutil

    from service.config import Settings

    db = tmp_path / "l2o.db"
    shutil.copyfile(request.getfixturevalue("sqlite_migrated"), db)
    (tmp_path / "pretrained").mkdir(exist_ok=True)
    store = {"memory": dict(session_store="memory"),
             "redis": dict(session_store=REDIS_URL, session_key_prefix=request.getfixturevalue("redis_prefix")),
             }[request.param]
    return Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{db}", pretrained_dir=tmp_path / "pretrained",
                    step_max_body_bytes=100_000, **store)


@pytest.fixture(params=["lstm", "feature_mlp", "feature_mlp+options"])
def ckpt_bytes(request):
    """The session tests run on both architectures: the paper's LSTM, and the feature MLP, plain and with its
    options (the step memory, a wider state, the relative correction and its warm-up), with a non-zero output layer (a
    fresh one is exactly Adam, which would hide a mix-up of its weights)."""
    if request.param == "lstm":
        return checkpoint_bytes(seed=3)
    from service.lopt import Checkpoint

    memory = ({"step_memory": True, "relative_correction": True, "correction_warmup": True, "memory_up_only": True}
              if request.param.endswith("options") else {})
    base = Checkpoint.from_bytes(checkpoint_bytes(seed=3, architecture="feature_mlp", hidden_size=4,
                                                  output_scale=0.003, **memory))
    g = torch.Generator().manual_seed(3)
    weights = {k: v + 0.3 * torch.randn(v.shape, generator=g) if k.startswith("head.") else v
               for k, v in base.weights.items()}
    return Checkpoint(base.config, weights).to_bytes()


@pytest.fixture
def headers(client, admin_headers, make_key, ckpt_bytes):
    """A key with the optimize scope, after `opt` version 1 (alias @prod) is registered."""
    r = client.post("/v1/optimizers/opt/versions", content=ckpt_bytes,
                    headers={**admin_headers, "Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    assert client.put("/v1/optimizers/opt/aliases/prod", json={"version": 1}, headers=admin_headers).status_code == 200
    return {"Authorization": f"Bearer {make_key('optimize')}"}
