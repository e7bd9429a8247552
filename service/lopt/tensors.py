"""Checks on tensors that the step path runs on every request, so they must cost next to nothing."""

from __future__ import annotations

import math

import torch


def all_finite(t: torch.Tensor) -> bool:
    """No NaN or infinity anywhere in `t`.

    By its minimum and maximum, which are finite exactly when every element is (both propagate NaN):
    a reduction that reads the tensor once. torch.isfinite(t).all() writes a boolean tensor first and,
    on the CPU, runs one to two orders of magnitude slower, which at a million gradients cost more than
    the LSTM step itself.
    """
    if t.numel() == 0:
        return True
    if not t.dtype.is_floating_point:
        return True
    lo, hi = torch.aminmax(t)
    # Python floats: torch.isfinite on the two 0-d tensors cost 10 µs against 3 (a 10k-coordinate step's check).
    return math.isfinite(lo.item()) and math.isfinite(hi.item())
