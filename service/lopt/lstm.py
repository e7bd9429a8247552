"""The coordinatewise LSTM step, written once as readable torch: the definition meta-training
differentiates, and the one every fast path (kernel.py's native operator) is tested against."""

from __future__ import annotations

import torch

from service.lopt.config import OptimizerConfig
from service.lopt.preprocess import preprocess
from service.lopt.state import LSTMState


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
