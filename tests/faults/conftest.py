"""Fixtures for the fault tests: real `l2o serve` processes on 127.0.0.1, a small optimizer to serve, and
the gradients of a deterministic training run to send."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from service import lopt
from service.lopt import Checkpoint
from tests.conftest import checkpoint_bytes
from tests.live_server import ServeProcess, free_port
from tests.sessions.conftest import redis_prefix  # noqa: F401  (a fixture: a Redis key prefix of the test's own)

SHAPES = {"fc.weight": [4, 3], "fc.bias": [4]}


@pytest.fixture
def pretrained(tmp_path) -> Path:
    """A folder the server registers at start: optimizer `opt`, version 1."""
    Checkpoint.from_bytes(checkpoint_bytes(seed=5)).save(tmp_path / "pretrained" / "opt")
    return tmp_path / "pretrained"


def serve_env(tmp_path: Path, pretrained: Path, **settings: str) -> dict[str, str]:
    env = {**os.environ, "L2O_DATA_DIR": str(tmp_path / "data"), "L2O_PRETRAINED_DIR": str(pretrained),
           "L2O_LOG_LEVEL": "warning", "L2O_SESSION_STORE": "memory"}
    env.pop("L2O_DATABASE_URL", None)
    env.update({f"L2O_{k.upper()}": v for k, v in settings.items()})
    return env


@pytest.fixture
def server_factory(tmp_path, pretrained, sqlite_migrated):
    """server_factory(port=None, **L2O settings) -> a ServeProcess (not started); all killed at the end.
    The embedded SQLite database is in place already, migrated, so the first start is as quick as a restart."""
    (tmp_path / "data").mkdir(exist_ok=True)
    shutil.copyfile(sqlite_migrated, tmp_path / "data" / "l2o.db")
    made: list[ServeProcess] = []

    def make(port: int | None = None, **settings: str) -> ServeProcess:
        server = ServeProcess(serve_env(tmp_path, pretrained, **settings), port or free_port(),
                              tmp_path / f"serve-{len(made)}.log")
        made.append(server)
        return server

    yield make
    for server in made:
        server.kill()


def grads(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return {name: torch.randn(shape, generator=g) for name, shape in SHAPES.items()}


def expected_updates(n_steps: int) -> list[torch.Tensor]:
    """What service.lopt gives for the run, step by step: the reference every fault must still match."""
    ckpt = Checkpoint.from_bytes(checkpoint_bytes(seed=5))
    state = lopt.init(ckpt.config, sum(torch.Size(s).numel() for s in SHAPES.values()))
    out = []
    with torch.no_grad():
        for i in range(n_steps):
            g = grads(i)
            u, state = lopt.step(ckpt.config, ckpt.weights, torch.cat([g[n].reshape(-1) for n in SHAPES]), state)
            out.append(u)
    return out


# --- a remote training run --------------------------------------------------------------------------------

def model() -> torch.nn.Linear:
    """The model every run starts from: the same weights each time."""
    torch.manual_seed(0)
    return torch.nn.Linear(3, 4)


def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    x = torch.randn(8, 3, generator=g)
    return x, x @ torch.tensor([[1.0, -2.0, 0.5, 3.0]] * 3) + 0.1 * torch.randn(8, 4, generator=g)


def train_step(net: torch.nn.Module, opt: torch.optim.Optimizer, i: int) -> None:
    x, y = batch(i)
    opt.zero_grad()
    torch.nn.functional.mse_loss(net(x), y).backward()
    opt.step()


def parameters(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in net.named_parameters()}


@pytest.fixture
def fast_retries(monkeypatch):
    """The SDK's own retry policy, with its backoff capped at 0.5 s so a run waits for a restarting server
    no longer than it must (the policy is the same; only the test's clock is shorter)."""
    monkeypatch.setattr("client._constants.MAX_RETRY_DELAY", 0.5)
