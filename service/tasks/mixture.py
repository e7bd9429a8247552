"""The mixture: each batch is a random problem from a distribution wide enough to cover what users train.

A seed picks one problem, and the batch holds `n_instances` instances of it (own initialisations, own
minibatches): an MLP of depth 1-4 and width 8-256 with sigmoid, tanh, ReLU or GELU units, with or without
layer norm, classifying the digits or a synthetic data set labelled by a random teacher network, or
fitting a teacher's regression targets; logistic and softmax regression; a small convnet on the digits;
the paper's quadratics. On top, random rescaling of the parameters (the model sees c·θ), of the inputs
and of the loss, and minibatches of 16 to 128 examples. A learned optimizer meta-trained here has seen
problems whose best Adam learning rate spans decades, which is what carries it to a user's own model.

`clean`, the share of the teacher problems drawn without noise (no flipped labels, no noise on the targets)
and from 128 to 1,024 examples, which a network can fit exactly: there the loss keeps falling for thousands
of steps and a step that shrinks on a schedule falls behind, where on a noisy problem the loss meets a floor
that a shrinking step lowers. At 0 (the default) no extra draw is made, so every earlier recipe draws the
same problems.

`max_coords` bounds n_instances × parameters per instance (meta-training memory grows with it): a problem
drawn larger has its width shrunk until it fits.
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch
import torch.nn.functional as F

from service.tasks.base import Footprint, split_seed
from service.tasks.digits import Layout, digits_split
from service.tasks.functional import Dataset, FunctionalBatch
from service.tasks.quadratic import QuadraticFamily

ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu, "gelu": F.gelu}
KINDS = ("mlp", "regression", "softmax", "conv", "quadratic")
KIND_WEIGHTS = (0.45, 0.15, 0.15, 0.15, 0.10)
BATCH_SIZES = (16, 32, 64, 128)


def log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def mlp_layout(sizes: list[int]) -> Layout:
    shapes = []
    for i in range(len(sizes) - 1):
        shapes.append((f"fc{i}.weight", (sizes[i + 1], sizes[i])))
        shapes.append((f"fc{i}.bias", (sizes[i + 1],)))
    return Layout(tuple(shapes))


def mlp_forward(p: dict[str, torch.Tensor], x: torch.Tensor, n_layers: int, activation: str,
                layer_norm: bool) -> torch.Tensor:
    act = ACTIVATIONS[activation]
    h = x
    for i in range(n_layers):
        h = F.linear(h, p[f"fc{i}.weight"], p[f"fc{i}.bias"])
        if i < n_layers - 1:
            if layer_norm:
                h = F.layer_norm(h, h.shape[-1:])
            h = act(h)
    return h


def teacher_data(rng: random.Random, n: int, d_in: int, d_out: int, classify: bool, input_scale: float,
                 generator: torch.Generator, noisy: bool = True) -> Dataset:
    """Gaussian inputs labelled by a random one-hidden-layer tanh network (argmax, or values); `noisy`: 5% of
    the labels flipped, or noise on the values."""
    x = torch.randn(n, d_in, generator=generator)
    hidden = rng.choice((8, 16, 32))
    w1 = torch.randn(hidden, d_in, generator=generator) / math.sqrt(d_in)
    w2 = torch.randn(d_out, hidden, generator=generator) * 2 / math.sqrt(hidden)
    out = torch.tanh(x @ w1.t() * 2) @ w2.t()
    if classify:
        y = out.argmax(dim=1)
        if noisy:
            flip = torch.rand(n, generator=generator) < 0.05
            y = torch.where(flip, torch.randint(0, d_out, (n,), generator=generator), y)
    else:
        y = out + 0.1 * torch.randn(n, d_out, generator=generator) if noisy else out
    return Dataset(x * input_scale, y)


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def squared_error(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((pred - y) ** 2).mean(dim=-1)


class _Rescaled:
    """A TaskBatch whose parameters the model sees as c·θ and whose loss is multiplied by s."""

    def __init__(self, inner: Any, param_scale: float, loss_scale: float) -> None:
        self.inner, self.c, self.s = inner, param_scale, loss_scale
        self.n_instances, self.dim = inner.n_instances, inner.dim

    def init_params(self) -> torch.Tensor:
        return self.inner.init_params() / self.c

    def loss(self, theta: torch.Tensor, step: int) -> torch.Tensor:
        return self.inner.loss(theta * self.c, step) * self.s

    def eval_loss(self, theta: torch.Tensor) -> torch.Tensor:
        return self.inner.eval_loss(theta * self.c) * self.s


class MixtureFamily:
    name = "mixture"

    def __init__(self, max_coords: int = 200_000, max_width: int = 256, max_depth: int = 4,
                 rescale: bool = True, clean: float = 0.0) -> None:
        if not (1_000 <= int(max_coords) <= 50_000_000):
            raise ValueError(f"max_coords must be in 1000..50000000, got {max_coords}")
        if not (8 <= int(max_width) <= 1024):
            raise ValueError(f"max_width must be in 8..1024, got {max_width}")
        if not (1 <= int(max_depth) <= 8):
            raise ValueError(f"max_depth must be in 1..8, got {max_depth}")
        self.max_coords, self.max_width, self.max_depth = int(max_coords), int(max_width), int(max_depth)
        if not (0.0 <= float(clean) <= 1.0):
            raise ValueError(f"clean must be in 0..1, got {clean}")
        self.rescale, self.clean = bool(rescale), float(clean)

    def params(self) -> dict[str, Any]:
        params = {"max_coords": self.max_coords, "max_width": self.max_width, "max_depth": self.max_depth,
                  "rescale": self.rescale}
        return params | ({"clean": self.clean} if self.clean else {})

    def footprint(self) -> Footprint:
        """The largest problem the mixture can draw: the widest, deepest MLP on the digits (64 inputs, 10
        classes), with minibatches of the largest size; a batch holds at most `max_coords` coordinates."""
        w, d = self.max_width, self.max_depth
        params = 64 * w + (d - 1) * w * w + 10 * w + d * w + 10
        per_example = 64 + 3 * d * w + 20  # inputs, each layer before and after its activation (and norm)
        batch = max(BATCH_SIZES)
        return Footprint(params=params, data=1024 * (64 + 10), activations=batch * per_example,
                         flops=6 * params * batch, eval_flops=2 * params * 2048,
                         max_batch_params=self.max_coords)

    def describe(self, seed: int, split: str = "train") -> dict[str, Any]:
        """The problem a seed draws (what `sample` builds), as plain data."""
        rng = random.Random(split_seed(seed, split))
        kind = rng.choices(KINDS, KIND_WEIGHTS)[0]
        spec: dict[str, Any] = {"kind": kind, "batch_size": rng.choice(BATCH_SIZES)}
        if kind in ("mlp", "regression"):
            spec.update(depth=rng.randint(1, self.max_depth),
                        width=int(round(log_uniform(rng, 8, self.max_width))),
                        activation=rng.choice(tuple(ACTIVATIONS)), layer_norm=rng.random() < 0.3)
        if kind == "conv":
            spec.update(channels=rng.choice((2, 4, 8, 16)), activation=rng.choice(tuple(ACTIVATIONS)))
        if kind == "quadratic":
            spec.update(dim=rng.choice((5, 10, 20, 50)))
        if kind in ("mlp", "softmax"):
            spec["data"] = rng.choice(("digits", "teacher"))
        if kind == "regression" or spec.get("data") == "teacher":
            spec.update(d_in=rng.choice((4, 8, 16, 32, 64)), d_out=rng.choice((2, 3, 5, 10)))
        spec["input_scale"] = log_uniform(rng, 0.3, 3.0) if self.rescale else 1.0
        spec["param_scale"] = log_uniform(rng, 0.3, 3.0) if self.rescale else 1.0
        spec["loss_scale"] = log_uniform(rng, 0.1, 10.0) if self.rescale else 1.0
        spec["data_seed"] = rng.randrange(2**31)
        if self.clean and (kind == "regression" or spec.get("data") == "teacher") and rng.random() < self.clean:
            spec.update(clean=True, examples=rng.choice((128, 256, 512, 1024)))
        return spec

    def sample(self, n_instances: int, seed: int, split: str = "train",
               device: torch.device | str = "cpu", instance_seed: int | None = None) -> Any:
        """`seed`'s problem; its instances' initialisations and minibatches from `instance_seed` when given
        (the same problem on other instances, as a learning rate is tuned on), else from `seed`."""
        spec = self.describe(seed, split)
        batch = self._build(spec, n_instances, split_seed(seed if instance_seed is None else instance_seed, split),
                            split, device)
        batch.description = spec
        return batch

    def _build(self, spec: dict[str, Any], n: int, seed: int, split: str, device: torch.device | str) -> Any:
        kind = spec["kind"]
        if kind == "quadratic":
            inner = QuadraticFamily(dim=spec["dim"], init_std=1.0).sample(n, spec["data_seed"], split, device)
            return _Rescaled(inner, spec["param_scale"], spec["loss_scale"]) if self.rescale else inner
        generator = torch.Generator().manual_seed(spec["data_seed"])
        rng = random.Random(spec["data_seed"])
        if kind == "conv" or spec.get("data") == "digits":
            x, y = digits_split(split)
            data, d_in, d_out, classify = Dataset(x * spec["input_scale"], y), 64, 10, True
        else:
            classify = kind != "regression"
            d_in, d_out = spec["d_in"], spec["d_out"]
            data = teacher_data(rng, spec.get("examples", 1024), d_in, d_out, classify, spec["input_scale"], generator,
                                noisy=not spec.get("clean", False))
        loss_of = cross_entropy if classify else squared_error
        if kind == "conv":
            c = spec["channels"]
            layout = Layout((("conv.weight", (c, 1, 3, 3)), ("conv.bias", (c,)),
                             ("fc.weight", (10, c * 16)), ("fc.bias", (10,))))
            act = ACTIVATIONS[spec["activation"]]

            def loss_fn(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
                h = F.conv2d(xb.reshape(-1, 1, 8, 8), p["conv.weight"], p["conv.bias"], padding=1)
                h = F.avg_pool2d(act(h), 2).flatten(1)
                return loss_of(F.linear(h, p["fc.weight"], p["fc.bias"]), yb)
        else:
            depth = spec.get("depth", 0) if kind != "softmax" else 0
            width = spec.get("width", 0)
            while True:
                sizes = [d_in, *([width] * depth), d_out]
                layout = mlp_layout(sizes)
                if layout.dim * n <= self.max_coords or width <= 8 or depth == 0:
                    break
                width = max(8, width // 2)
            spec["width"] = width if depth else None
            n_layers, activation, norm = len(sizes) - 1, spec.get("activation", "relu"), spec.get("layer_norm", False)

            def loss_fn(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
                return loss_of(mlp_forward(p, xb, n_layers, activation, norm), yb)
        return FunctionalBatch(layout, loss_fn, data, n_instances=n, seed=seed, batch_size=spec["batch_size"],
                               param_scale=spec["param_scale"], loss_scale=spec["loss_scale"], device=device)
