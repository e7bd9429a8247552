"""The per-coordinate hidden state, kept apart from the weights so it can travel."""

from __future__ import annotations

from typing import NamedTuple

import torch

from service.lopt.config import OptimizerConfig


class LSTMState(NamedTuple):
    """(h, c) of every LSTM layer for every coordinate (for the feature MLP: its moments, (n_coords, 8)).

    One tensor of shape (n_coords, num_layers, 2, hidden_size): each coordinate's
    80 floats (by default) sit together, so a slice of coordinates is one
    contiguous block that can be processed, stored or sent on its own.
    """

    hc: torch.Tensor

    @property
    def n_coords(self) -> int:
        return self.hc.shape[0]

    def detach(self) -> LSTMState:
        return LSTMState(self.hc.detach())


def init(config: OptimizerConfig, n_coords: int, *, dtype: torch.dtype = torch.float32,
         device: torch.device | str | None = None) -> LSTMState:
    """Zero state for `n_coords` coordinates."""
    if n_coords < 0:
        raise ValueError(f"n_coords must be >= 0, got {n_coords}")
    return LSTMState(torch.zeros(config.state_shape(n_coords), dtype=dtype, device=device))


def state_nbytes(config: OptimizerConfig, n_coords: int, dtype: torch.dtype = torch.float32) -> int:
    return n_coords * config.state_floats_per_coord * torch.empty((), dtype=dtype).element_size()
