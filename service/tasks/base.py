"""What a task family is: a seeded source of optimizee instances, evaluated a batch at a time.

Every instance's parameters are one flat vector, so a batch is a (B, D) tensor
and the coordinatewise optimizer sees B * D coordinates at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

SPLITS = ("train", "validation", "heldout")


class TaskBatch(Protocol):
    n_instances: int
    dim: int

    def init_params(self) -> torch.Tensor:
        """Starting parameters, (B, D), the same for the same seed."""

    def loss(self, theta: torch.Tensor, step: int) -> torch.Tensor:
        """Per-instance loss (B,) at optimizee step `step` (which picks the minibatch)."""

    def eval_loss(self, theta: torch.Tensor) -> torch.Tensor:
        """Per-instance loss (B,) on the instance's whole data: the figure reports use."""


@dataclass(frozen=True)
class Footprint:
    """What one instance of a family costs, from its parameters alone: what a job's price is estimated from
    (service/jobs/price.py) before anything is allocated. Counts, not bytes."""

    params: int  # coordinates of one instance
    data: int  # floats an instance holds for its whole life (a quadratic's W and y)
    activations: int  # floats one loss-and-gradient keeps for its backward pass
    flops: int  # floating-point operations of one loss-and-gradient
    eval_flops: int  # of one reported loss (`eval_loss`)
    # A family that shrinks its problems to keep a batch's coordinates under a bound (the mixture) says so
    # here, with `params` its largest instance: a batch then costs at most this many coordinates.
    max_batch_params: int | None = None


class TaskFamily(Protocol):
    name: str

    def footprint(self) -> Footprint:
        """One instance's sizes and costs, computed from the parameters, allocating nothing."""

    def params(self) -> dict[str, Any]:
        """The family's parameters, as they would be given to `make_family`."""

    def sample(self, n_instances: int, seed: int, split: str = "train",
               device: torch.device | str = "cpu") -> TaskBatch:
        """`n_instances` instances drawn from `seed`; `split` keeps train and held-out apart."""


def split_seed(seed: int, split: str) -> int:
    """Distinct seed streams for each split, so held-out instances are never trained on."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return (int(seed) * 1_000_003 + SPLITS.index(split) * 7_919) % (2**63 - 1)
