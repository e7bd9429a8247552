"""A batch of instances of any model written as a function of one instance's named parameters.

`torch.func.vmap` runs the one-instance function over the B rows of the flat (B, D) parameters, so a
family only writes its model once, for one instance, and gets the (B, D) batch the optimizers expect.
Each instance draws its own minibatches from the same data, fixed by the seed and the step, so every
optimizer run on the batch sees the same data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import functional_call, vmap  # noqa: F401  (functional_call is re-exported for models)

from service.tasks.digits import Layout

# (params by name, inputs (M, ...)) -> per-example loss (M,)
LossFn = Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Dataset:
    x: torch.Tensor  # (N, ...)
    y: torch.Tensor  # (N, ...)

    def __len__(self) -> int:
        return self.x.shape[0]


def standardize(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(dim=0)) / x.std(dim=0).clamp_min(1e-6)


def fan_in_init(layout: Layout, n_instances: int, generator: torch.Generator,
                scale: float = 1.0) -> torch.Tensor:
    """torch's default init (uniform ±1/√fan_in, biases by their weight's fan-in), times `scale`; a name
    ending in `gain` starts at 1 and one ending in `shift` at 0 (normalisation parameters)."""
    shapes = dict(layout.shapes)
    parts = []
    for name, shape in layout.shapes:
        n = math.prod(shape)
        if name.endswith("gain"):
            parts.append(torch.ones(n_instances, n))
            continue
        if name.endswith("shift"):
            parts.append(torch.zeros(n_instances, n))
            continue
        weight = shape if name.endswith("weight") else shapes.get(name[: -len("bias")] + "weight", shape)
        fan_in = math.prod(weight[1:]) if len(weight) > 1 else weight[0]
        bound = scale / math.sqrt(max(fan_in, 1))
        parts.append((torch.rand(n_instances, n, generator=generator) * 2 - 1) * bound)
    return torch.cat(parts, dim=1)


class FunctionalBatch:
    """B instances of one model on one data set; the TaskBatch protocol (see tasks/base.py).

    `param_scale` c reparametrises θ as c·θ (the model sees c·θ, the optimizer θ), and `loss_scale`
    multiplies the loss: both change what a hand-designed optimizer needs as its learning rate, which is
    what a learned one must cope with.
    """

    def __init__(self, layout: Layout, loss_fn: LossFn, data: Dataset, *, n_instances: int, seed: int,
                 batch_size: int, init: Callable[[int, torch.Generator], torch.Tensor] | None = None,
                 param_scale: float = 1.0, loss_scale: float = 1.0, eval_examples: int = 2048,
                 device: torch.device | str = "cpu") -> None:
        self.layout = layout
        self.n_instances = n_instances
        self.batch_size = min(batch_size, len(data))
        self.device = torch.device(device)
        self.data = Dataset(data.x.to(self.device), data.y.to(self.device))
        self.param_scale = float(param_scale)
        self.loss_scale = float(loss_scale)
        self._seed = int(seed)
        self._eval_examples = eval_examples
        generator = torch.Generator().manual_seed(self._seed)
        theta0 = (init or (lambda n, g: fan_in_init(layout, n, g)))(n_instances, generator)
        self._theta0 = (theta0 / self.param_scale).to(self.device)

        def one(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            params = layout.unflatten((theta * self.param_scale).unsqueeze(0))
            return loss_fn({k: v.squeeze(0) for k, v in params.items()}, x, y).mean() * self.loss_scale

        self._batched = vmap(one, in_dims=(0, 0, 0))
        self._shared = vmap(one, in_dims=(0, None, None))

    @property
    def dim(self) -> int:
        return self.layout.dim

    def init_params(self) -> torch.Tensor:
        return self._theta0.clone()

    def minibatch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed((self._seed + 104_729 * (step + 1)) % (2**63 - 1))
        idx = torch.randint(0, len(self.data), (self.n_instances, self.batch_size), generator=g).to(self.device)
        return self.data.x[idx], self.data.y[idx]

    def loss(self, theta: torch.Tensor, step: int) -> torch.Tensor:
        x, y = self.minibatch(step)
        return self._batched(theta, x, y)

    def eval_loss(self, theta: torch.Tensor) -> torch.Tensor:
        """The loss on the whole data set (its first `eval_examples` examples, in chunks)."""
        n = min(len(self.data), self._eval_examples)
        total = theta.new_zeros(theta.shape[0])
        for begin in range(0, n, 1024):
            x, y = self.data.x[begin:min(n, begin + 1024)], self.data.y[begin:min(n, begin + 1024)]
            total = total + self._shared(theta, x, y) * x.shape[0]
        return total / n


class Tiled:
    """Each instance of `inner` repeated `k` times in a row (same start, same minibatches): k optimizer
    settings run side by side on the very same problems, in one batched call."""

    def __init__(self, inner: FunctionalBatch, k: int) -> None:
        self.inner, self.k = inner, int(k)
        self.n_instances, self.dim = inner.n_instances * self.k, inner.dim

    def init_params(self) -> torch.Tensor:
        return self.inner.init_params().repeat_interleave(self.k, dim=0)

    def loss(self, theta: torch.Tensor, step: int) -> torch.Tensor:
        x, y = self.inner.minibatch(step)
        return self.inner._batched(theta, x.repeat_interleave(self.k, dim=0), y.repeat_interleave(self.k, dim=0))

    def eval_loss(self, theta: torch.Tensor) -> torch.Tensor:
        return self.inner.eval_loss(theta)
