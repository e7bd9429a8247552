"""scikit-learn's 8×8 digits, the stand-in for MNIST, and what every classifier on them shares.

The images ship inside scikit-learn, so nothing is downloaded. A fixed shuffle
splits them: train and validation instances draw minibatches from the first
75%, held-out instances from the rest.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from service.tasks.base import split_seed

TRAIN_FRACTION = 0.75
EVAL_IMAGES = 512  # a fixed subset for reported losses: a steady figure at a quarter of the cost
N_CLASSES = 10
N_FEATURES = 64


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    return x[order], y[order]


def digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _digits()
    cut = int(TRAIN_FRACTION * x.shape[0])
    if split == "heldout":
        return x[cut:], y[cut:]
    return x[:cut], y[:cut]


@dataclass(frozen=True)
class Layout:
    """Where each named tensor sits in an instance's flat parameter vector."""

    shapes: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def dim(self) -> int:
        return sum(math.prod(s) for _, s in self.shapes)

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        out, offset = {}, 0
        for name, shape in self.shapes:
            n = math.prod(shape)
            out[name] = theta[:, offset:offset + n].reshape(theta.shape[0], *shape)
            offset += n
        return out

    def init(self, n_instances: int, generator: torch.Generator) -> torch.Tensor:
        """torch's default init (uniform ±1/√fan_in) for every instance."""
        parts = []
        for name, shape in self.shapes:
            fan_in = math.prod(shape[1:]) if name.endswith("weight") else _fan_in_of_bias(self.shapes, name)
            bound = 1.0 / math.sqrt(max(fan_in, 1))
            parts.append((torch.rand(n_instances, math.prod(shape), generator=generator) * 2 - 1) * bound)
        return torch.cat(parts, dim=1)


def _fan_in_of_bias(shapes: Sequence[tuple[str, tuple[int, ...]]], bias_name: str) -> int:
    weight = dict(shapes)[bias_name[: -len("bias")] + "weight"]
    return math.prod(weight[1:])


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh,
}


class DigitsBatch:
    """A batch of classifiers on the digits; subclasses give the layout and the forward pass."""

    layout: Layout

    def __init__(self, n_instances: int, seed: int, split: str, batch_size: int,
                 device: torch.device | str) -> None:
        self.n_instances = n_instances
        self.batch_size = batch_size
        self.device = torch.device(device)
        self._seed = split_seed(seed, split)
        x, y = digits_split(split)
        self.x, self.y = x.to(self.device), y.to(self.device)
        self.eval_x, self.eval_y = self.x[:EVAL_IMAGES], self.y[:EVAL_IMAGES]
        self._theta0 = self.layout.init(n_instances, torch.Generator().manual_seed(self._seed)).to(self.device)

    @property
    def dim(self) -> int:
        return self.layout.dim

    def init_params(self) -> torch.Tensor:
        return self._theta0.clone()

    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, M, 10) for inputs x (B, M, 64)."""
        raise NotImplementedError

    def minibatch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each instance's minibatch at `step`: fixed by the seed, so every optimizer sees the same data."""
        g = torch.Generator().manual_seed((self._seed + 104_729 * (step + 1)) % (2**63 - 1))
        idx = torch.randint(0, self.x.shape[0], (self.n_instances, self.batch_size), generator=g).to(self.device)
        return self.x[idx], self.y[idx]

    def _cross_entropy(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = self.forward(theta, x)
        losses = F.cross_entropy(logits.reshape(-1, N_CLASSES), y.reshape(-1), reduction="none")
        return losses.view(y.shape).mean(dim=1)

    def loss(self, theta: torch.Tensor, step: int) -> torch.Tensor:
        x, y = self.minibatch(step)
        return self._cross_entropy(theta, x, y)

    def eval_loss(self, theta: torch.Tensor) -> torch.Tensor:
        """Loss on the split's first EVAL_IMAGES images (the same for every instance and step)."""
        x = self.eval_x.unsqueeze(0).expand(self.n_instances, -1, -1)
        y = self.eval_y.unsqueeze(0).expand(self.n_instances, -1)
        return self._cross_entropy(theta, x, y)
