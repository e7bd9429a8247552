"""Checking an uploaded checkpoint before it is stored: it must load, have the architecture its config
claims (Checkpoint.from_bytes checks names, shapes and finiteness), and produce finite updates."""

from __future__ import annotations

from typing import Any

import torch

from service.errors import DigestMismatch, InvalidCheckpoint
from service.lopt import Checkpoint, CheckpointError, init, step
from service.lopt.checkpoint import read_metadata, sha256_hex
from service.lopt.tensors import all_finite

# Gradients across the magnitudes optimizees produce, zero and both signs included.
PROBE_GRADS = (0.0, 1e-12, -1e-8, 1e-4, -1e-2, 1.0, -1.0, 1e2, -1e4, 1e8)
PROBE_STEPS = 3


def probe(checkpoint: Checkpoint) -> None:
    """Run a few steps on the probe gradients with the server's inference kernel; all must stay finite."""
    grads = torch.tensor(PROBE_GRADS, dtype=torch.float32)
    state = init(checkpoint.config, grads.shape[0])
    with torch.no_grad():
        for i in range(PROBE_STEPS):
            updates, state = step(checkpoint.config, checkpoint.weights, grads, state)
            if not all_finite(updates):
                raise InvalidCheckpoint(f"the checkpoint produces non-finite updates on a probe gradient "
                                        f"(step {i + 1})", detail={"probe_grads": list(PROBE_GRADS)})
            if not all_finite(state.hc):
                raise InvalidCheckpoint(f"the checkpoint produces a non-finite state on a probe gradient "
                                        f"(step {i + 1})", detail={"probe_grads": list(PROBE_GRADS)})


def validate(data: bytes, *, expected_sha256: str | None = None,
             config: dict[str, Any] | None = None) -> tuple[Checkpoint, bytes]:
    """The loaded checkpoint and the bytes to store (self-describing, the config in their metadata).

    The bytes are stored as sent when they carry their config; a bare safetensors file with a separate
    config is re-serialised so the stored file describes itself.
    """
    if expected_sha256 is not None:
        actual = sha256_hex(data)
        if actual != expected_sha256.strip().lower():
            raise DigestMismatch(f"the upload's sha256 is {actual}, but {expected_sha256} was declared",
                                 detail={"expected": expected_sha256, "actual": actual})
    try:
        checkpoint = Checkpoint.from_bytes(data, config=config)
    except CheckpointError as exc:
        raise InvalidCheckpoint(f"invalid checkpoint: {exc}") from exc
    probe(checkpoint)
    stored = data if "config" in read_metadata(data) else checkpoint.to_bytes()
    return checkpoint, stored
