"""Device names from settings (L2O_JOB_DEVICE, L2O_STEP_DEVICE) as torch devices."""

from __future__ import annotations

import torch


def resolve_device(name: str, setting: str) -> str:
    """`auto` is cuda when this machine has a GPU, else cpu; asking for a GPU that is not there is an
    error naming `setting`."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"{setting}={name} but torch sees no CUDA device on this machine")
    return name
