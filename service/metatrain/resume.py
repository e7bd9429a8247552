"""The checkpoint for *resuming* meta-training: weights, meta-optimizer state, iteration, RNG state.

Kept apart from `service.lopt.Checkpoint`, which is for *using* an optimizer.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ResumeCheckpoint:
    iteration: int  # iterations completed
    weights: dict[str, torch.Tensor]
    meta_optimizer: dict[str, Any]
    rng_state: torch.Tensor
    best_weights: dict[str, torch.Tensor]
    best_eval: float
    history: list[dict[str, float]] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save({
            "format": "l2o-resume/1", "iteration": self.iteration, "weights": self.weights,
            "meta_optimizer": self.meta_optimizer, "rng_state": self.rng_state,
            "best_weights": self.best_weights, "best_eval": self.best_eval, "history": self.history,
        }, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ResumeCheckpoint:
        # weights_only keeps a tampered file from running code on load.
        doc = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if not isinstance(doc, dict) or doc.get("format") != "l2o-resume/1":
            raise ValueError("not an l2o resume checkpoint")
        return cls(doc["iteration"], doc["weights"], doc["meta_optimizer"], doc["rng_state"],
                   doc["best_weights"], doc["best_eval"], doc.get("history", []))
