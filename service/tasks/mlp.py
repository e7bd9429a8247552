"""The paper's MNIST MLP, on the digits: hidden layers of sigmoid (or relu, tanh) units."""

from __future__ import annotations

from typing import Any

import torch

from service.tasks.base import Footprint
from service.tasks.digits import ACTIVATIONS, EVAL_IMAGES, N_CLASSES, N_FEATURES, DigitsBatch, Layout


def mlp_layout(hidden_sizes: tuple[int, ...]) -> Layout:
    shapes, fan_in = [], N_FEATURES
    for i, width in enumerate((*hidden_sizes, N_CLASSES)):
        shapes.append((f"fc{i}.weight", (width, fan_in)))
        shapes.append((f"fc{i}.bias", (width,)))
        fan_in = width
    return Layout(tuple(shapes))


class MLPBatch(DigitsBatch):
    def __init__(self, family: MLPFamily, n_instances: int, seed: int, split: str,
                 device: torch.device | str) -> None:
        self.layout = mlp_layout(family.hidden_sizes)
        self.activation = ACTIVATIONS[family.activation]
        self.n_layers = len(family.hidden_sizes) + 1
        super().__init__(n_instances, seed, split, family.batch_size, device)

    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        p = self.layout.unflatten(theta)
        h = x
        for i in range(self.n_layers):
            h = torch.baddbmm(p[f"fc{i}.bias"].unsqueeze(1), h, p[f"fc{i}.weight"].transpose(1, 2))
            if i < self.n_layers - 1:
                h = self.activation(h)
        return h


class MLPFamily:
    name = "mlp"

    def __init__(self, hidden_sizes: list[int] | tuple[int, ...] = (20,), activation: str = "sigmoid",
                 batch_size: int = 128) -> None:
        hidden_sizes = tuple(int(h) for h in hidden_sizes)
        if len(hidden_sizes) > 8 or any(not (1 <= h <= 4096) for h in hidden_sizes):
            raise ValueError(f"hidden_sizes must be at most 8 layers of 1..4096 units, got {list(hidden_sizes)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if not (1 <= int(batch_size) <= 4096):
            raise ValueError(f"batch_size must be in 1..4096, got {batch_size}")
        self.hidden_sizes = hidden_sizes
        self.activation = activation
        self.batch_size = int(batch_size)

    def params(self) -> dict[str, Any]:
        return {"hidden_sizes": list(self.hidden_sizes), "activation": self.activation,
                "batch_size": self.batch_size}

    def footprint(self) -> Footprint:
        weights = mlp_layout(self.hidden_sizes).dim
        # Per example: its inputs, each layer's output before and after the activation, the softmax.
        per_example = N_FEATURES + 2 * sum(self.hidden_sizes) + 2 * N_CLASSES
        return Footprint(params=weights, data=0, activations=self.batch_size * per_example,
                         flops=6 * weights * self.batch_size, eval_flops=2 * weights * EVAL_IMAGES)

    def sample(self, n_instances: int, seed: int, split: str = "train",
               device: torch.device | str = "cpu") -> MLPBatch:
        return MLPBatch(self, n_instances, seed, split, device)


class LogisticFamily(MLPFamily):
    """Multinomial logistic regression on the digits: an MLP with no hidden layer, a convex task."""

    name = "logistic"

    def __init__(self, batch_size: int = 128) -> None:
        super().__init__(hidden_sizes=(), batch_size=batch_size)

    def params(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size}
