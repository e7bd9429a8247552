"""Evaluation: the learned optimizer against every tuned baseline on the same held-out instances."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from service.lopt import Checkpoint
from service.metatrain.baselines import BASELINES, TunedBaseline, tune_all
from service.metatrain.rollout import lstm_curve, torch_optim_curve
from service.tasks.base import TaskFamily


@dataclass
class Curve:
    mean: list[float]
    std: list[float]

    @property
    def final(self) -> float:
        return self.mean[-1]

    @classmethod
    def of(cls, losses: torch.Tensor) -> Curve:
        finite = torch.where(torch.isfinite(losses), losses, torch.full_like(losses, float("nan")))
        mean = losses.mean(dim=1)  # inf when any instance diverged: a diverged run must not look good
        std = torch.nan_to_num(finite.std(dim=1), nan=0.0) if losses.shape[1] > 1 else torch.zeros_like(mean)
        return cls([float(x) for x in mean], [float(x) for x in std])


@dataclass
class EvaluationReport:
    family: str
    family_params: dict[str, Any]
    steps: int
    n_instances: int
    seed: int
    curves: dict[str, Curve]
    learning_rates: dict[str, float] = field(default_factory=dict)

    @property
    def final(self) -> dict[str, float]:
        return {name: c.final for name, c in self.curves.items()}

    @property
    def best_baseline(self) -> str:
        baselines = {k: v for k, v in self.final.items() if k != "lstm"}
        return min(baselines, key=baselines.get)

    @property
    def ratio(self) -> float:
        best = self.final[self.best_baseline]
        return self.final["lstm"] / best if best > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family, "family_params": self.family_params, "steps": self.steps,
            "n_instances": self.n_instances, "seed": self.seed,
            "curves": {k: {"mean": v.mean, "std": v.std} for k, v in self.curves.items()},
            "final": self.final, "learning_rates": self.learning_rates,
            "best_baseline": self.best_baseline, "ratio": self.ratio,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvaluationReport:
        return cls(d["family"], d["family_params"], d["steps"], d["n_instances"], d["seed"],
                   {k: Curve(v["mean"], v["std"]) for k, v in d["curves"].items()}, d.get("learning_rates", {}))

    def table(self) -> str:
        rows = [f"{'optimizer':<10} {'lr':>8} {'final loss':>12} {'std':>10}"]
        for name, curve in sorted(self.curves.items(), key=lambda kv: kv[1].final):
            lr = f"{self.learning_rates[name]:.0e}" if name in self.learning_rates else "-"
            rows.append(f"{name:<10} {lr:>8} {curve.final:>12.4g} {curve.std[-1]:>10.3g}")
        rows.append(f"LSTM / best baseline ({self.best_baseline}): {self.ratio:.3f}")
        return "\n".join(rows)


def evaluate(optimizer: Checkpoint, family: TaskFamily, n_instances: int = 64, steps: int = 100, seed: int = 0,
             *, baselines: Sequence[str] = tuple(BASELINES), tuned: dict[str, TunedBaseline] | None = None,
             tune_instances: int = 16, device: str = "cpu",
             state_dtype: torch.dtype = torch.float32) -> EvaluationReport:
    """Mean (and spread) loss per step for the learned optimizer and each tuned baseline.

    Baselines are tuned on training instances (unless `tuned` is given); every
    curve is measured on the same held-out instances.
    """
    if tuned is None:
        tuned = tune_all(family, baselines, steps=steps, n_instances=tune_instances, seed=seed, device=device)
    batch = family.sample(n_instances, seed, "heldout", device=device)
    weights = {k: v.to(device) for k, v in optimizer.weights.items()}
    curves = {"lstm": Curve.of(lstm_curve(optimizer.config, weights, batch, steps, state_dtype=state_dtype))}
    for name in baselines:
        factory = BASELINES[name]
        lr = tuned[name].lr
        curves[name] = Curve.of(torch_optim_curve(lambda params, f=factory, lr=lr: f(params, lr), batch, steps))
    return EvaluationReport(family.name, family.params(), steps, n_instances, seed, curves,
                            {name: tuned[name].lr for name in baselines})
