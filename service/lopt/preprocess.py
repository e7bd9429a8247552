"""Gradient preprocessing from Appendix A of the paper.

Gradient coordinates span many orders of magnitude; the LSTM sees each one as
(log|g| / p, sign g) when |g| >= e^-p and as (-1, e^p g) otherwise, so both
tiny and huge gradients land in a range the network can read.
"""

from __future__ import annotations

import math

import torch


def preprocess(grads: torch.Tensor, kind: str, p: float = 10.0) -> torch.Tensor:
    """Map a flat gradient (N,) to LSTM inputs (N, input_size)."""
    if kind == "none":
        return grads.unsqueeze(-1)
    if kind != "log_sign":
        raise ValueError(f"unknown preprocessing {kind!r}")
    magnitude = grads.abs()
    big = magnitude >= math.exp(-p)
    # clamp keeps log finite on the branch torch.where discards, so no NaN leaks into gradients.
    log_part = torch.where(big, torch.log(magnitude.clamp_min(math.exp(-p))) / p, torch.full_like(grads, -1.0))
    sign_part = torch.where(big, torch.sign(grads), grads * math.exp(p))
    return torch.stack([log_part, sign_part], dim=-1)
