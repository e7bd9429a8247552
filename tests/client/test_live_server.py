"""The SDK against a real `l2o serve` process on 127.0.0.1: real sockets, the embedded default's key file,
and the server's kernel in another process making the same updates as LocalOptimizer here."""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest
import torch

from client import AsyncClient, Client, LocalOptimizer, RemoteOptimizer, SessionNotFoundError, StepConflictError
from service.cli.demo import ServerProcess
from service.lopt import Checkpoint
from tests.client.test_optimizer import mlp, same, train
from tests.conftest import checkpoint_bytes


def test_the_sdk_against_l2o_serve(tmp_path, monkeypatch):
    data, pretrained = tmp_path / "data", tmp_path / "pretrained"
    Checkpoint.from_bytes(checkpoint_bytes(hidden_size=4, num_layers=1, seed=11)).save(pretrained / "shipped")
    env = {k: v for k, v in os.environ.items() if not k.startswith("L2O_")}
    env.update(L2O_DATA_DIR=str(data), L2O_PRETRAINED_DIR=str(pretrained))
    with ServerProcess(tmp_path / "server.log", env=env) as url:
        # No key given: the client reads the one the embedded server wrote on its first start.
        monkeypatch.delenv("L2O_API_KEY", raising=False)
        monkeypatch.setenv("L2O_DATA_DIR", str(data))
        with Client(url) as l2o:
            assert [o.name for o in l2o.optimizers.list()] == ["shipped"]
            remote_model, local_model = mlp(), mlp()
            remote = RemoteOptimizer(remote_model.named_parameters(), optimizer="shipped", client=l2o)
            local = LocalOptimizer(local_model.named_parameters(), optimizer="shipped", client=l2o)
            train(remote_model, remote, 3)
            train(local_model, local, 3)
            assert same(remote_model, local_model)

            state = remote.state_dict()
            remote.close()
            resumed = RemoteOptimizer(remote_model.named_parameters(), optimizer="shipped", client=l2o)
            resumed.load_state_dict(state)
            train(remote_model, resumed, 2)
            train(local_model, local, 2)
            assert same(remote_model, local_model)
            assert l2o.sessions.get(resumed.session_id).step == 5
            assert torch.isfinite(next(remote_model.parameters())).all()

            # The async client gets the blocking client's bits.
            grads = {"w": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)}
            blocking = l2o.sessions.create("shipped", {"w": [2, 3]})
            expected = [l2o.sessions.step(blocking.id, step=k, grads=grads).updates["w"] for k in range(2)]
            assert asyncio.run(_async_steps(url, grads, expected))


async def _async_steps(url: str, grads: dict, expected: list) -> bool:
    async with AsyncClient(url) as l2o:
        session = await l2o.sessions.create("shipped", {"w": [2, 3]})
        first = await l2o.sessions.step(session.id, step=0, grads=grads)
        replay = await l2o.sessions.step(session.id, step=0, grads=grads, wire="json")
        second = await l2o.sessions.step(session.id, step=1, grads=grads)
        assert np.array_equal(first.updates["w"], expected[0]) and np.array_equal(second.updates["w"], expected[1])
        assert np.array_equal(replay.updates["w"], expected[0])
        with pytest.raises(StepConflictError) as conflict:
            await l2o.sessions.step(session.id, step=5, grads=grads)
        assert conflict.value.response.request.url.path.endswith("/step")   # an error keeps its request
        await l2o.sessions.delete(session.id)
        with pytest.raises(SessionNotFoundError):
            await l2o.sessions.step(session.id, step=2, grads=grads)
    return True
