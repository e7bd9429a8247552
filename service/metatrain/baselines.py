"""Hand-designed baselines through torch.optim, each with its learning rate tuned on training instances."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from service.metatrain.rollout import torch_optim_curve
from service.tasks.base import TaskFamily

OptimizerFactory = Callable[[list[torch.Tensor], float], torch.optim.Optimizer]

BASELINES: dict[str, OptimizerFactory] = {
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr),
    "nag": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True),
    "rmsprop": lambda params, lr: torch.optim.RMSprop(params, lr=lr),
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
}

# Half-decade steps from 1e-4 to 10: wide enough for every family here.
LR_GRID: tuple[float, ...] = tuple(round(10 ** (e / 2), 10) for e in range(-8, 3))


@dataclass(frozen=True)
class TunedBaseline:
    name: str
    lr: float
    score: float  # mean final loss on the training instances it was tuned on


def tune(name: str, family: TaskFamily, *, steps: int, n_instances: int, seed: int,
         grid: Sequence[float] = LR_GRID, device: str = "cpu") -> TunedBaseline:
    """Pick the learning rate with the lowest mean final loss on *training* instances only."""
    factory = BASELINES[name]
    batch = family.sample(n_instances, seed, "train", device=device)
    best = TunedBaseline(name, float(grid[0]), math.inf)
    for lr in grid:
        curve = torch_optim_curve(lambda params, lr=lr: factory(params, lr), batch, steps, final_only=True)
        score = float(curve[-1].mean())
        if math.isfinite(score) and score < best.score:
            best = TunedBaseline(name, float(lr), score)
    return best


def tune_all(family: TaskFamily, names: Sequence[str] = tuple(BASELINES), **kwargs) -> dict[str, TunedBaseline]:
    unknown = sorted(set(names) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; known: {sorted(BASELINES)}")
    return {name: tune(name, family, **kwargs) for name in names}
