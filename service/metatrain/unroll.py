"""One truncated-BPTT unroll: run the learned optimizer for `unroll` steps and return the meta-loss.

The optimizee's gradient is taken with torch.autograd.grad with respect to θ
alone, as a fresh tensor that enters the LSTM detached: second derivatives are
dropped (∂∇/∂φ = 0), and no later step can overwrite it in place the way
`.grad` would be. The meta-loss is the sum over the unroll of f(θ_t) after
each update, the last one included; the caller back-propagates it once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from service.lopt import LSTMState, OptimizerConfig, step
from service.tasks.base import TaskBatch

# "log_rise" charges each step RISE_PENALTY times the log of its loss over the run's initial loss, where that is
# above 1. On the mixture's validation draws recipe v2's feature MLP's first update put the loss above its
# initial value on 4 of 8 problems (a step of about 10x Adam's): "log" charges that as one bad step of hundreds.
RISE_PENALTY = 5.0


@dataclass
class Trajectory:
    """Where an optimizee run stands between unrolls: θ (B, D), LSTM state, step count, and the log of each
    instance's loss at step 0 (set by the first unroll)."""

    theta: torch.Tensor
    state: LSTMState
    step: int
    initial_log_loss: torch.Tensor | None = None

    def detach(self) -> Trajectory:
        return Trajectory(self.theta.detach(), self.state.detach(), self.step, self.initial_log_loss)


def optimizee_gradient(batch: TaskBatch, theta: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-instance loss, ∂f/∂θ as a detached fresh tensor); the loss stays in the graph."""
    if not theta.requires_grad:
        theta = theta.requires_grad_()
    loss = batch.loss(theta, step)
    (grad,) = torch.autograd.grad(loss.sum(), theta, retain_graph=torch.is_grad_enabled() and loss.requires_grad)
    return loss, grad.detach()


def run_unroll(config: OptimizerConfig, weights: dict[str, torch.Tensor], batch: TaskBatch,
               traj: Trajectory, unroll: int, meta_loss: str = "sum") -> tuple[torch.Tensor, Trajectory]:
    """Advance `traj` by `unroll` steps; returns (meta-loss, new trajectory) with the graph kept.

    meta_loss "sum" is the paper's Σ f(θ_t); "log" is the mean of log f(θ_t), which weighs a problem's
    relative progress the same whatever its loss scale (a mixture of problems needs that); "log_rise" adds
    RISE_PENALTY · max(0, log f(θ_t) − log f(θ_0)) to each term.
    """
    theta = traj.theta
    if not theta.requires_grad:
        theta = theta.detach().requires_grad_()
    b, d = theta.shape
    state = traj.state
    total = theta.new_zeros(())
    initial = traj.initial_log_loss

    def term(loss: torch.Tensor) -> torch.Tensor:
        if meta_loss == "sum":
            return loss.mean()
        # A floor keeps log finite for a problem solved to zero loss; 1e-8 is below any loss reported.
        log = loss.clamp_min(1e-8).log()
        if meta_loss == "log_rise":
            log = log + RISE_PENALTY * (log - initial).clamp_min(0)
        return log.mean()

    for t in range(unroll):
        loss, grad = optimizee_gradient(batch, theta, traj.step + t)
        if initial is None:
            initial = loss.detach().clamp_min(1e-8).log()
        if t > 0:
            total = total + term(loss)
        updates, state = step(config, weights, grad.reshape(-1), state)
        theta = theta + updates.view(b, d)
    total = total + term(batch.loss(theta, traj.step + unroll))
    return (total / (1 if meta_loss == "sum" else unroll),
            Trajectory(theta, state, traj.step + unroll, initial))
