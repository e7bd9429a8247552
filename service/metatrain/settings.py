"""Meta-training settings; the defaults are the paper's (horizon 100, unrolls of 20, Adam at 1e-3)."""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any

META_LR_SCHEDULES = ("constant", "cosine")
META_LOSSES = ("sum", "log", "log_rise")


@dataclass(frozen=True)
class MetaTrainSettings:
    iterations: int = 200  # one iteration = one optimizee trajectory of `horizon` steps for a batch of instances
    horizon: int = 100
    unroll: int = 20
    meta_lr: float = 1e-3
    # "constant", or "cosine": the meta learning rate falls from meta_lr to 0 along a half cosine over the
    # iterations, so the last iterations fine-tune instead of jumping around the basin they found.
    meta_lr_schedule: str = "constant"
    instances: int = 32  # optimizee instances trained on at once
    seed: int = 0
    grad_clip: float = 1.0
    eval_every: int = 20
    eval_instances: int = 16
    resume_every: int = 10
    device: str = "cpu"
    # "sum": the paper's Σ f(θ_t). "log": the mean of log f(θ_t), the same weight for every problem's relative
    # progress whatever its loss scale (a mixture of problems needs it); a trajectory that diverges is dropped.
    # "log_rise": "log", plus a penalty on every step whose loss is above the run's initial loss (unroll.py).
    meta_loss: str = "sum"
    # When set, each iteration's horizon is drawn log-uniformly from horizon..max_horizon (a multiple of
    # unroll): short runs keep early progress in view, long ones teach the optimizer to stay stable.
    max_horizon: int | None = None
    eval_problems: int = 1  # validation problems (a mixture's validation draws several)
    # Validation draws come from this seed instead of the run's, so that every seed of one recipe picks its
    # checkpoint on the same problems (recipe v9's six seeds each chose on their own draws).
    eval_seed: int | None = None
    # Problems drawn per iteration, each of `instances` instances; every meta-step averages their meta-gradients,
    # so that one step does not follow whichever single problem (a quadratic, a convnet) the iteration drew.
    problems_per_iteration: int = 1

    def __post_init__(self) -> None:
        checks = [
            (1 <= self.iterations <= 1_000_000, "iterations must be in 1..1000000"),
            (1 <= self.horizon <= 100_000, "horizon must be in 1..100000"),
            (1 <= self.unroll <= self.horizon, "unroll must be in 1..horizon"),
            (self.horizon % self.unroll == 0, "horizon must be a multiple of unroll"),
            (0 < self.meta_lr < 1, "meta_lr must be in (0, 1)"),
            (self.meta_lr_schedule in META_LR_SCHEDULES,
             f"meta_lr_schedule must be one of {', '.join(META_LR_SCHEDULES)}"),
            (1 <= self.instances <= 65_536, "instances must be in 1..65536"),
            (self.grad_clip > 0, "grad_clip must be positive"),
            (1 <= self.eval_every, "eval_every must be >= 1"),
            (1 <= self.eval_instances <= 65_536, "eval_instances must be in 1..65536"),
            (1 <= self.resume_every, "resume_every must be >= 1"),
            (self.meta_loss in META_LOSSES, f"meta_loss must be one of {', '.join(META_LOSSES)}"),
            (self.max_horizon is None or self.horizon <= self.max_horizon <= 100_000,
             "max_horizon must be in horizon..100000"),
            (1 <= self.eval_problems <= 64, "eval_problems must be in 1..64"),
            (self.eval_seed is None or 0 <= self.eval_seed < 2**31, "eval_seed must be in 0..2147483647"),
            (1 <= self.problems_per_iteration <= 64, "problems_per_iteration must be in 1..64"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def meta_lr_at(self, iteration: int) -> float:
        """The meta learning rate for 0-based `iteration` (a function of the iteration alone, so a resumed
        run follows the same schedule)."""
        if self.meta_lr_schedule == "cosine":
            return self.meta_lr * 0.5 * (1.0 + math.cos(math.pi * iteration / self.iterations))
        return self.meta_lr

    def horizon_at(self, iteration: int) -> int:
        """The horizon of 0-based `iteration` (a function of the seed and the iteration, so resumes agree)."""
        if self.max_horizon is None or self.max_horizon == self.horizon:
            return self.horizon
        rng = random.Random(self.seed * 1_000_003 + iteration)
        drawn = math.exp(rng.uniform(math.log(self.horizon), math.log(self.max_horizon)))
        return max(self.unroll, int(drawn) // self.unroll * self.unroll)

    def problem_seed(self, iteration: int, k: int) -> int:
        """The draw of problem `k` of 0-based `iteration`; problem 0 is what a one-problem run draws."""
        first = self.seed * 1_000_033 + iteration
        # Within 63 bits, as torch's generators take them (recipe v19's seeds are far below, so unchanged).
        return first if k == 0 else (first * 64 + k) * 1_000_037 % 2**63

    @property
    def validation_seed(self) -> int:
        return self.seed if self.eval_seed is None else self.eval_seed

    @property
    def eval_horizon(self) -> int:
        return self.max_horizon or self.horizon

    def to_dict(self) -> dict[str, Any]:
        """Every setting; eval_seed and problems_per_iteration only when set, so that runs without them record
        what they did before them."""
        out = asdict(self)
        if out["eval_seed"] is None:
            del out["eval_seed"]
        if out["problems_per_iteration"] == 1:
            del out["problems_per_iteration"]
        return out
