"""Test doubles for the step service: a registry of a few real checkpoints, and a clock the test moves."""

from __future__ import annotations

import torch

from service.lopt import Checkpoint, CoordinatewiseLSTM, OptimizerConfig
from service.lopt.checkpoint import sha256_hex
from service.sessions.versions import VersionRef


def make_checkpoint(seed: int, **config) -> Checkpoint:
    cfg = OptimizerConfig(**config)
    net = CoordinatewiseLSTM(cfg, generator=torch.Generator().manual_seed(seed))
    return Checkpoint(cfg, {k: v.detach().clone() for k, v in net.weights().items()})


class FakeVersions:
    """`opt:1` (alias @prod), `opt:2` (another seed) and `small:1` (a smaller LSTM)."""

    def __init__(self) -> None:
        self.checkpoints = {"1": make_checkpoint(1), "2": make_checkpoint(2),
                            "3": make_checkpoint(3, hidden_size=4, num_layers=1)}
        # The bytes as the registry stores them, serialised once: their sha256 is the version's digest.
        self.data = {k: c.to_bytes() for k, c in self.checkpoints.items()}
        self.refs = {
            "1": VersionRef("opt", 1, "1", sha256_hex(self.data["1"])),
            "2": VersionRef("opt", 2, "2", sha256_hex(self.data["2"])),
            "3": VersionRef("small", 1, "3", sha256_hex(self.data["3"])),
        }
        self.names = {"opt:1": "1", "opt@prod": "1", "opt:2": "2", "opt": "2", "small": "3", "small:1": "3"}
        self.loads: list[str] = []

    def resolve(self, reference: str) -> VersionRef:
        from service.errors import NotFound

        if reference not in self.names:
            raise NotFound(f"no optimizer version {reference!r}")
        return self.refs[self.names[reference]]

    def checkpoint(self, version_id: str) -> bytes | None:
        self.loads.append(version_id)
        return self.data.get(version_id)


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
