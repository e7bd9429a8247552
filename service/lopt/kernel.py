"""The inference kernel: the no-grad step that the server runs.

Coordinates are processed in fixed-size blocks, so a coordinate's update never
depends on how many other coordinates share the call (batch invariance).
"""

from __future__ import annotations

import torch

from service.lopt.config import OptimizerConfig
from service.lopt.state import LSTMState

BLOCK = 4096


@torch.no_grad()
def step_inference(config: OptimizerConfig, weights: dict[str, torch.Tensor], grads: torch.Tensor,
                   state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
    from service.lopt.functional import step_autograd

    n = grads.shape[0]
    updates = torch.empty(n, dtype=torch.float32, device=grads.device)
    new_hc = torch.empty_like(state.hc)
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        u, s = step_autograd(config, weights, grads[start:stop], LSTMState(state.hc[start:stop]))
        updates[start:stop] = u
        new_hc[start:stop] = s.hc
    return updates, LSTMState(new_hc)
