"""The optimizer as a pair of pure functions, in the shape of optax.

    state = init(config, n_coords)
    updates, state = step(config, weights, grads, state)
    theta = theta + updates

`step` is differentiable with respect to `weights` (meta-training) and, under
torch.no_grad(), runs the inference kernel the server uses.
"""

from __future__ import annotations

import torch

from service.lopt import feature_mlp
from service.lopt.config import OptimizerConfig
from service.lopt.preprocess import preprocess
from service.lopt.state import LSTMState, init

__all__ = ["init", "step", "step_autograd", "LearnedOptimizer"]


def step_autograd(config: OptimizerConfig, weights: dict[str, torch.Tensor], grads: torch.Tensor,
                  state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
    """Differentiable step over every coordinate at once (grads: (N,), any float dtype)."""
    x = preprocess(grads.to(torch.float32), config.preprocess, config.preprocess_p)
    hc = state.hc.to(torch.float32)
    new_layers = []
    inp = x
    for layer in range(config.num_layers):
        h, c = hc[:, layer, 0], hc[:, layer, 1]
        gates = torch.addmm(weights[f"cell.{layer}.bias"], torch.cat([inp, h], dim=1),
                            weights[f"cell.{layer}.weight"].t())
        i, f, g, o = gates.chunk(4, dim=1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        new_layers.append(torch.stack([h_new, c_new], dim=1))
        inp = h_new
    out = torch.addmm(weights["head.bias"], inp, weights["head.weight"].t()).squeeze(-1)
    updates = out * config.output_scale
    new_hc = torch.stack(new_layers, dim=1).to(state.hc.dtype)
    return updates, LSTMState(new_hc)


def step(config: OptimizerConfig, weights: dict[str, torch.Tensor], grads: torch.Tensor,
         state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
    """One optimizer step for every coordinate: returns (updates, new_state)."""
    if grads.dim() != 1:
        raise ValueError(f"grads must be flat (n_coords,), got shape {tuple(grads.shape)}")
    if state.hc.shape[1:] != config.state_shape_per_coord:
        raise ValueError(f"state has shape {tuple(state.hc.shape)}, "
                         f"the config needs {config.state_shape(grads.shape[0])}")
    if grads.shape[0] != state.n_coords:
        raise ValueError(f"grads has {grads.shape[0]} coordinates, state has {state.n_coords}")
    if config.architecture == "feature_mlp":
        updates, hc = feature_mlp.step(weights, grads, state.hc, config.output_scale, config.num_layers)
        return updates, LSTMState(hc)
    needs_grad = torch.is_grad_enabled() and (
        grads.requires_grad or state.hc.requires_grad or any(w.requires_grad for w in weights.values()))
    if needs_grad:
        return step_autograd(config, weights, grads, state)
    from service.lopt.kernel import step_inference

    return step_inference(config, weights, grads, state)


class LearnedOptimizer:
    """A config bound to `init` and `step`, for callers that keep one optimizer around."""

    def __init__(self, config: OptimizerConfig) -> None:
        self.config = config

    def init(self, n_coords: int, *, dtype: torch.dtype = torch.float32,
             device: torch.device | str | None = None) -> LSTMState:
        return init(self.config, n_coords, dtype=dtype, device=device)

    def step(self, weights: dict[str, torch.Tensor], grads: torch.Tensor,
             state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
        return step(self.config, weights, grads, state)
