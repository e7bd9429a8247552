"""The held-out problems of `bench.generalization`: data and architectures that no training family has.

The training families (service/tasks) use the digits, synthetic teacher data and quadratics, with plain
MLPs, softmax regression and one small convnet. Nothing here is any of those: other data sets
(scikit-learn's wine, breast cancer, iris and diabetes, and synthetic sequences and bar images made
here) and other architectures (residual blocks, an autoencoder, a recurrent net, self-attention, batch
norm, a very wide and a very deep net). This suite is for reporting only: never for meta-training,
validation or choosing a checkpoint.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from service.tasks.digits import Layout
from service.tasks.functional import Dataset, FunctionalBatch, fan_in_init, standardize
from service.tasks.mixture import cross_entropy, squared_error


@dataclass(frozen=True)
class Problem:
    name: str
    description: str
    builder: Callable[[], Callable[[int, int], FunctionalBatch]]  # built on first use: data sets load lazily

    def batch(self, n_instances: int, seed: int) -> FunctionalBatch:
        return self.builder()(n_instances, seed)


@functools.cache
def _sklearn(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    import sklearn.datasets as ds

    data = getattr(ds, f"load_{name}")()
    return torch.tensor(data.data, dtype=torch.float32), torch.tensor(data.target)


def _batch(layout: Layout, loss_fn, data: Dataset, batch_size: int):
    def make(n: int, seed: int) -> FunctionalBatch:
        return FunctionalBatch(layout, loss_fn, data, n_instances=n, seed=seed, batch_size=batch_size,
                               init=lambda k, g: fan_in_init(layout, k, g), eval_examples=len(data))
    return make


@functools.cache
def wine_residual() -> Callable[[int, int], FunctionalBatch]:
    x, y = _sklearn("wine")
    width = 32
    layout = Layout((("inp.weight", (width, 13)), ("inp.bias", (width,)),
                     *[(f"res{i}.{j}.{k}", shape) for i in range(2) for j in range(2)
                       for k, shape in (("weight", (width, width)), ("bias", (width,)))],
                     ("out.weight", (3, width)), ("out.bias", (3,))))

    def loss_fn(p, xb, yb):
        h = F.linear(xb, p["inp.weight"], p["inp.bias"])
        for i in range(2):
            r = F.elu(F.linear(F.elu(h), p[f"res{i}.0.weight"], p[f"res{i}.0.bias"]))
            h = h + F.linear(r, p[f"res{i}.1.weight"], p[f"res{i}.1.bias"])
        return cross_entropy(F.linear(F.elu(h), p["out.weight"], p["out.bias"]), yb)
    return _batch(layout, loss_fn, Dataset(standardize(x), y.long()), 32)


@functools.cache
def cancer_autoencoder() -> Callable[[int, int], FunctionalBatch]:
    x, _ = _sklearn("breast_cancer")
    sizes = (30, 16, 4, 16, 30)
    layout = Layout(tuple((f"l{i}.{k}", (sizes[i + 1], sizes[i]) if k == "weight" else (sizes[i + 1],))
                          for i in range(4) for k in ("weight", "bias")))

    def loss_fn(p, xb, yb):
        h = xb
        for i in range(4):
            h = F.linear(h, p[f"l{i}.weight"], p[f"l{i}.bias"])
            if i < 3:
                h = F.softplus(h)
        return squared_error(h, yb)
    data = standardize(x)
    return _batch(layout, loss_fn, Dataset(data, data), 64)


def _sequences(n: int, length: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, length, dim, generator=torch.Generator().manual_seed(seed))


@functools.cache
def sequence_rnn() -> Callable[[int, int], FunctionalBatch]:
    """An Elman RNN reads 12 steps of a 3-d signal and says in which of 4 quadrants its running sum ends."""
    x = _sequences(1024, 12, 3, 11)
    total = x.sum(dim=1)
    y = (total[:, 0] > 0).long() * 2 + (total[:, 1] > 0).long()
    hidden = 16
    layout = Layout((("in.weight", (hidden, 3)), ("rec.weight", (hidden, hidden)), ("rec.bias", (hidden,)),
                     ("out.weight", (4, hidden)), ("out.bias", (4,))))

    def loss_fn(p, xb, yb):
        h = xb.new_zeros(xb.shape[0], hidden)
        for t in range(xb.shape[1]):
            h = torch.tanh(F.linear(xb[:, t], p["in.weight"]) + F.linear(h, p["rec.weight"], p["rec.bias"]))
        return cross_entropy(F.linear(h, p["out.weight"], p["out.bias"]), yb)
    return _batch(layout, loss_fn, Dataset(x, y), 64)


@functools.cache
def sequence_attention() -> Callable[[int, int], FunctionalBatch]:
    """One self-attention layer points at the token of 8 that lies closest to the sequence's mean."""
    x = _sequences(1024, 8, 6, 13)
    y = ((x - x.mean(dim=1, keepdim=True)) ** 2).sum(dim=-1).argmin(dim=1)
    d = 16
    layout = Layout((("q.weight", (d, 6)), ("k.weight", (d, 6)), ("v.weight", (d, 6)),
                     ("score.weight", (1, d + 6)), ("score.bias", (1,))))

    def loss_fn(p, xb, yb):
        q, k, v = (F.linear(xb, p[f"{n}.weight"]) for n in "qkv")
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1) @ v
        logits = F.linear(torch.cat([att, xb], dim=-1), p["score.weight"], p["score.bias"]).squeeze(-1)
        return cross_entropy(logits, yb)
    return _batch(layout, loss_fn, Dataset(x, y), 64)


@functools.cache
def bars_batchnorm_cnn() -> Callable[[int, int], FunctionalBatch]:
    """A two-layer CNN with batch norm tells horizontal, vertical and the two diagonal bars apart in noisy
    8×8 images."""
    g = torch.Generator().manual_seed(17)
    n = 1024
    y = torch.randint(0, 4, (n,), generator=g)
    pos = torch.randint(1, 7, (n,), generator=g)
    img = torch.zeros(n, 8, 8)
    idx = torch.arange(8)
    for i in range(n):
        c, p = int(y[i]), int(pos[i])
        if c == 0:
            img[i, p, :] = 1
        elif c == 1:
            img[i, :, p] = 1
        elif c == 2:
            img[i, idx, (idx + p - 4).clamp(0, 7)] = 1
        else:
            img[i, idx, (7 - idx + p - 4).clamp(0, 7)] = 1
    img = img + 0.5 * torch.randn(n, 8, 8, generator=g)
    ch = 8
    layout = Layout((("c1.weight", (ch, 1, 3, 3)), ("bn1.gain", (ch,)), ("bn1.shift", (ch,)),
                     ("c2.weight", (ch, ch, 3, 3)), ("bn2.gain", (ch,)), ("bn2.shift", (ch,)),
                     ("fc.weight", (4, ch)), ("fc.bias", (4,))))

    def loss_fn(p, xb, yb):
        h = xb.reshape(-1, 1, 8, 8)
        for i in (1, 2):
            h = F.conv2d(h, p[f"c{i}.weight"], padding=1)
            h = F.relu(F.batch_norm(h, None, None, p[f"bn{i}.gain"], p[f"bn{i}.shift"], training=True))
        return cross_entropy(F.linear(h.mean(dim=(2, 3)), p["fc.weight"], p["fc.bias"]), yb)
    return _batch(layout, loss_fn, Dataset(img.reshape(n, 64), y), 64)


@functools.cache
def diabetes_outliers() -> Callable[[int, int], FunctionalBatch]:
    """Regression on the diabetes data with 5% of the targets replaced by outliers 8 standard deviations out."""
    x, y = _sklearn("diabetes")
    y = standardize(y.float().unsqueeze(1))
    g = torch.Generator().manual_seed(19)
    hit = torch.rand(y.shape[0], generator=g) < 0.05
    sign = torch.where(torch.rand(y.shape[0], generator=g) < 0.5, -1.0, 1.0)
    y = torch.where(hit.unsqueeze(1), 8.0 * sign.unsqueeze(1), y)
    layout = Layout((("l0.weight", (32, 10)), ("l0.bias", (32,)), ("l1.weight", (1, 32)), ("l1.bias", (1,))))

    def loss_fn(p, xb, yb):
        return squared_error(F.linear(F.silu(F.linear(xb, p["l0.weight"], p["l0.bias"])),
                                      p["l1.weight"], p["l1.bias"]), yb)
    return _batch(layout, loss_fn, Dataset(standardize(x), y), 32)


@functools.cache
def iris_wide() -> Callable[[int, int], FunctionalBatch]:
    """A wide, shallow net: 4 inputs, 1,024 softplus units, 3 classes."""
    x, y = _sklearn("iris")
    layout = Layout((("l0.weight", (1024, 4)), ("l0.bias", (1024,)), ("l1.weight", (3, 1024)), ("l1.bias", (3,))))

    def loss_fn(p, xb, yb):
        return cross_entropy(F.linear(F.softplus(F.linear(xb, p["l0.weight"], p["l0.bias"])),
                                      p["l1.weight"], p["l1.bias"]), yb)
    return _batch(layout, loss_fn, Dataset(standardize(x), y.long()), 32)


@functools.cache
def cancer_deep_narrow() -> Callable[[int, int], FunctionalBatch]:
    """A deep, narrow net: 30 inputs, 8 hidden layers of 8 SiLU units, 2 classes."""
    x, y = _sklearn("breast_cancer")
    sizes = (30, *([8] * 8), 2)
    layout = Layout(tuple((f"l{i}.{k}", (sizes[i + 1], sizes[i]) if k == "weight" else (sizes[i + 1],))
                          for i in range(len(sizes) - 1) for k in ("weight", "bias")))

    def loss_fn(p, xb, yb):
        h = xb
        for i in range(len(sizes) - 1):
            h = F.linear(h, p[f"l{i}.weight"], p[f"l{i}.bias"])
            if i < len(sizes) - 2:
                h = F.silu(h)
        return cross_entropy(h, yb)
    return _batch(layout, loss_fn, Dataset(standardize(x), y.long()), 64)


PROBLEMS: tuple[Problem, ...] = (
    Problem("wine-residual", "residual ELU MLP on wine (13-32-[2 blocks]-3)", wine_residual),
    Problem("cancer-autoencoder", "softplus autoencoder 30-16-4-16-30 on breast cancer, MSE", cancer_autoencoder),
    Problem("sequence-rnn", "Elman RNN (16 tanh units) on 12-step sequences, 4 classes", sequence_rnn),
    Problem("sequence-attention", "one self-attention layer picks 1 of 8 tokens", sequence_attention),
    Problem("bars-bn-cnn", "2-layer CNN with batch norm on synthetic 8x8 bars, 4 classes", bars_batchnorm_cnn),
    Problem("diabetes-outliers", "SiLU MLP 10-32-1 regression, 5% outlier targets", diabetes_outliers),
    Problem("iris-wide", "wide shallow net 4-1024-3 (softplus) on iris", iris_wide),
    Problem("cancer-deep-narrow", "deep narrow net 30-8x8-2 (SiLU) on breast cancer", cancer_deep_narrow),
)
