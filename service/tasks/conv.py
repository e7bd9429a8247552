"""A small conv net on the 8×8 digits: a family the paper did not use but users would.

One 3×3 convolution, 2×2 average pooling, then a linear layer to the ten
classes. Every instance has its own filters; a grouped convolution (one group
per instance) evaluates the whole batch in one call.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from service.tasks.base import Footprint
from service.tasks.digits import ACTIVATIONS, EVAL_IMAGES, N_CLASSES, N_FEATURES, DigitsBatch, Layout


class ConvBatch(DigitsBatch):
    def __init__(self, family: ConvFamily, n_instances: int, seed: int, split: str,
                 device: torch.device | str) -> None:
        c = family.channels
        self.channels = c
        self.activation = ACTIVATIONS[family.activation]
        self.layout = Layout((
            ("conv.weight", (c, 1, 3, 3)),
            ("conv.bias", (c,)),
            ("fc.weight", (N_CLASSES, c * 16)),
            ("fc.bias", (N_CLASSES,)),
        ))
        super().__init__(n_instances, seed, split, family.batch_size, device)

    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        p = self.layout.unflatten(theta)
        b, m, _ = x.shape
        c = self.channels
        images = x.transpose(0, 1).reshape(m, b, 8, 8)  # instances as channels, one group each
        h = F.conv2d(images, p["conv.weight"].reshape(b * c, 1, 3, 3), p["conv.bias"].reshape(b * c),
                     padding=1, groups=b)
        h = F.avg_pool2d(self.activation(h), 2)  # (m, b*c, 4, 4)
        h = h.reshape(m, b, c * 16).transpose(0, 1)  # (b, m, c*16)
        return torch.baddbmm(p["fc.bias"].unsqueeze(1), h, p["fc.weight"].transpose(1, 2))


class ConvFamily:
    name = "conv"

    def __init__(self, channels: int = 4, activation: str = "relu", batch_size: int = 128) -> None:
        if not (1 <= int(channels) <= 64):
            raise ValueError(f"channels must be in 1..64, got {channels}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if not (1 <= int(batch_size) <= 4096):
            raise ValueError(f"batch_size must be in 1..4096, got {batch_size}")
        self.channels = int(channels)
        self.activation = activation
        self.batch_size = int(batch_size)

    def params(self) -> dict[str, Any]:
        return {"channels": self.channels, "activation": self.activation, "batch_size": self.batch_size}

    def footprint(self) -> Footprint:
        c = self.channels
        forward = 2 * (c * 64 * 9 + N_CLASSES * c * 16)  # per example: the 3x3 convolution, the linear layer
        per_example = N_FEATURES + 2 * c * 64 + c * 16 + 2 * N_CLASSES
        return Footprint(params=c * 9 + c + N_CLASSES * c * 16 + N_CLASSES, data=0,
                         activations=self.batch_size * per_example, flops=3 * forward * self.batch_size,
                         eval_flops=forward * EVAL_IMAGES)

    def sample(self, n_instances: int, seed: int, split: str = "train",
               device: torch.device | str = "cpu") -> ConvBatch:
        return ConvBatch(self, n_instances, seed, split, device)
