"""SIGTERM to a real `l2o serve` with the memory store: its sessions come back on the next start."""

from __future__ import annotations

import os
import signal

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from service import lopt
from service.app import create_app
from service.config import Settings
from service.lopt import Checkpoint
from service.sessions import wire
from service.sessions.wire import StepMessage, WireFormat
from tests.live_server import ServeProcess, free_port
from tests.sessions.fakes import make_checkpoint

pytestmark = pytest.mark.slow  # a real server start: a few seconds


def test_sigterm_saves_memory_sessions_and_the_next_start_loads_them(tmp_path):
    ckpt = make_checkpoint(4, hidden_size=4, num_layers=1)
    ckpt.save(tmp_path / "pretrained" / "opt")
    env = {**os.environ, "L2O_DATA_DIR": str(tmp_path / "data"), "L2O_PRETRAINED_DIR": str(tmp_path / "pretrained"),
           "L2O_SESSION_STORE": "memory", "L2O_LOG_LEVEL": "warning"}
    env.pop("L2O_DATABASE_URL", None)
    server = ServeProcess(env, free_port(), tmp_path / "serve.log")
    base = server.url
    shapes = {"w": [2, 3]}
    g = [{"w": torch.randn(2, 3, generator=torch.Generator().manual_seed(i))} for i in range(2)]
    steps = [wire.encode(StepMessage(i, g[i]), WireFormat.SAFETENSORS, field="grads") for i in range(2)]

    server.start()
    try:
        headers = {"Authorization": f"Bearer {(tmp_path / 'data' / 'admin.key').read_text().strip()}"}
        created = httpx.post(f"{base}/v1/sessions", json={"optimizer": "opt", "shapes": shapes}, headers=headers)
        sid = created.json()["id"]
        r = httpx.post(f"{base}/v1/sessions/{sid}/step", content=steps[0],
                       headers={**headers, "Content-Type": wire.SAFETENSORS_TYPE})
        assert r.status_code == 200, r.text
    finally:
        status = server.terminate()
    # uvicorn finishes its graceful shutdown, then re-raises the signal it caught.
    assert status in (0, -signal.SIGTERM), server.log.read_text()
    assert (tmp_path / "data" / "sessions.safetensors").exists()

    # The next start, in this process (a second server start would double the test's time).
    settings = Settings(data_dir=tmp_path / "data", database_url=None, pretrained_dir=tmp_path / "pretrained",
                        session_store="memory")
    with TestClient(create_app(settings)) as restarted:
        r = restarted.post(f"/v1/sessions/{sid}/step", content=steps[1],
                           headers={**headers, "Content-Type": wire.SAFETENSORS_TYPE})
        assert r.status_code == 200, r.text

    ck = Checkpoint.from_bytes(ckpt.to_bytes())
    state = lopt.init(ck.config, 6)
    with torch.no_grad():
        for grads in g:
            expected, state = lopt.step(ck.config, ck.weights, grads["w"].reshape(-1), state)
    got = wire.decode(r.content, WireFormat.SAFETENSORS, field="updates")
    assert got.step == 2 and torch.equal(got.tensors["w"].reshape(-1), expected)
