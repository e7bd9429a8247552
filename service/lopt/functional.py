"""The optimizer as a pair of pure functions, in the shape of optax.

    state = init(config, n_coords)
    updates, state = step(config, weights, grads, state)
    theta = theta + updates

`step` is differentiable with respect to `weights` (meta-training) and, under
torch.no_grad(), runs the inference kernel the server uses.
"""

from __future__ import annotations

import torch

from service.lopt.config import OptimizerConfig
from service.lopt.kernel import feature_mlp_step, step_inference, step_inference_
from service.lopt.lstm import step_autograd
from service.lopt.state import LSTMState, init

__all__ = ["init", "step", "step_autograd"]


def step(config: OptimizerConfig, weights: dict[str, torch.Tensor], grads: torch.Tensor,
         state: LSTMState, *, out_state: torch.Tensor | None = None,
         out_updates: torch.Tensor | None = None, kernel: str = "auto") -> tuple[torch.Tensor, LSTMState]:
    """One optimizer step for every coordinate: returns (updates, new_state). Without autograd, a caller
    that keeps buffers may have the new state written into `out_state` (`state.hc` itself: in place)
    and the updates into `out_updates` (see kernel.step_inference_); with it they are ignored. `kernel`
    picks the LSTM's inference implementation (kernel.KERNELS)."""
    if grads.dim() != 1:
        raise ValueError(f"grads must be flat (n_coords,), got shape {tuple(grads.shape)}")
    if state.hc.shape[1:] != config.state_shape_per_coord:
        raise ValueError(f"state has shape {tuple(state.hc.shape)}, "
                         f"the config needs {config.state_shape(grads.shape[0])}")
    if grads.shape[0] != state.n_coords:
        raise ValueError(f"grads has {grads.shape[0]} coordinates, state has {state.n_coords}")
    if config.architecture == "feature_mlp":
        updates, hc = feature_mlp_step(config, weights, grads, state.hc)
        if out_state is not None and not torch.is_grad_enabled():   # the buffers' contract, for any architecture
            hc = out_state.copy_(hc)
            updates = updates if out_updates is None else out_updates.copy_(updates)
        return updates, LSTMState(hc)
    needs_grad = torch.is_grad_enabled() and (
        grads.requires_grad or state.hc.requires_grad or any(w.requires_grad for w in weights.values()))
    if needs_grad:
        return step_autograd(config, weights, grads, state)
    if out_state is None:
        return step_inference(config, weights, grads, state, kernel=kernel)
    return step_inference_(config, weights, grads, state, out_state=out_state, out_updates=out_updates,
                           kernel=kernel)
