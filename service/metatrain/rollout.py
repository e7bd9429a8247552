"""Run an optimizer (learned or hand-designed) on a batch of instances and record its loss curve."""

from __future__ import annotations

from collections.abc import Callable

import torch

from service.lopt import LSTMState, OptimizerConfig, init, step
from service.tasks.base import TaskBatch


def _safe(loss: torch.Tensor) -> torch.Tensor:
    # A diverged instance reports +inf rather than NaN, so means and comparisons stay ordered.
    return torch.nan_to_num(loss.detach(), nan=float("inf"), posinf=float("inf"))


def _curve(batch: TaskBatch, steps: int, final_only: bool,
           advance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Losses (steps + 1, B) on the instances' whole data, θ_0 to θ_steps; `advance(θ, ∂f/∂θ)` gives θ_next.

    With `final_only`, just (1, B) at θ_steps: what validation and tuning need, at a fraction of the cost.
    """
    theta = batch.init_params().detach()
    curve = []
    for t in range(steps + 1):
        if t == steps or not final_only:
            with torch.no_grad():
                curve.append(_safe(batch.eval_loss(theta)))
        if t == steps:
            break
        theta = theta.detach().requires_grad_()
        (grad,) = torch.autograd.grad(batch.loss(theta, t).sum(), theta)
        with torch.no_grad():
            theta = advance(theta.detach(), grad)
    return torch.stack(curve)


def lstm_curve(config: OptimizerConfig, weights: dict[str, torch.Tensor], batch: TaskBatch, steps: int,
               state_dtype: torch.dtype = torch.float32, final_only: bool = False) -> torch.Tensor:
    """The loss curve under the learned optimizer (see `_curve`)."""
    b, d = batch.n_instances, batch.dim
    state: LSTMState = init(config, b * d, dtype=state_dtype, device=batch.init_params().device)
    weights = {k: v.detach() for k, v in weights.items()}

    def advance(theta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        nonlocal state
        updates, state = step(config, weights, grad.reshape(-1), state)
        return theta + updates.view(b, d)

    return _curve(batch, steps, final_only, advance)


def torch_optim_curve(make_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer], batch: TaskBatch,
                      steps: int, final_only: bool = False) -> torch.Tensor:
    """The loss curve under a torch.optim optimizer (see `_curve`).

    Every torch.optim optimizer used here acts elementwise, and the summed loss
    keeps each instance's gradient its own, so one optimizer over the (B, D)
    tensor is B independent runs.
    """
    param = batch.init_params().detach().clone().requires_grad_()
    opt = make_optimizer([param])

    def advance(theta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        param.grad = grad
        opt.step()
        return param.detach().clone()

    return _curve(batch, steps, final_only, advance)
