"""The paper's quadratics: f(θ) = ‖Wθ − y‖², W (d×d) and y with IID standard normal entries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from service.tasks.base import Footprint, split_seed


@dataclass
class QuadraticBatch:
    W: torch.Tensor  # (B, d, d)
    y: torch.Tensor  # (B, d)
    theta0: torch.Tensor  # (B, d)

    @property
    def n_instances(self) -> int:
        return self.W.shape[0]

    @property
    def dim(self) -> int:
        return self.W.shape[2]

    def init_params(self) -> torch.Tensor:
        return self.theta0.clone()

    def loss(self, theta: torch.Tensor, step: int = 0) -> torch.Tensor:
        residual = torch.bmm(self.W, theta.unsqueeze(-1)).squeeze(-1) - self.y
        return (residual * residual).sum(dim=1)

    def eval_loss(self, theta: torch.Tensor) -> torch.Tensor:
        return self.loss(theta)


class QuadraticFamily:
    name = "quadratic"

    def __init__(self, dim: int = 10, init_std: float = 0.01) -> None:
        if not (1 <= int(dim) <= 10_000):
            raise ValueError(f"dim must be in 1..10000, got {dim}")
        if not (0.0 <= float(init_std) <= 100.0):
            raise ValueError(f"init_std must be in [0, 100], got {init_std}")
        self.dim = int(dim)
        self.init_std = float(init_std)

    def params(self) -> dict[str, Any]:
        return {"dim": self.dim, "init_std": self.init_std}

    def footprint(self) -> Footprint:
        d = self.dim
        return Footprint(params=d, data=d * d + 2 * d, activations=2 * d, flops=4 * d * d + 4 * d,
                         eval_flops=2 * d * d + 2 * d)

    def sample(self, n_instances: int, seed: int, split: str = "train",
               device: torch.device | str = "cpu") -> QuadraticBatch:
        g = torch.Generator().manual_seed(split_seed(seed, split))
        d = self.dim
        W = torch.randn(n_instances, d, d, generator=g)
        y = torch.randn(n_instances, d, generator=g)
        theta0 = torch.randn(n_instances, d, generator=g) * self.init_std
        return QuadraticBatch(W.to(device), y.to(device), theta0.to(device))
