"""The step as one pointwise program per coordinate: what a GPU runs, compiled by torch.compile.

    step_pointwise_(config, weights, grads, hc, out_state, out_updates)    # eager (any device)
    compiled(config)(weights..., grads, hc, out_state, out_updates)        # the same, fused for a GPU

On a GPU the eager step is a few dozen passes over (N, 4H) tensors, each reading and writing the whole
batch; compiled, it is one or two kernels that keep a coordinate's gates in registers, so a step moves
little more than the state it must read and write.

The gate products are written as a sum over the inputs in a fixed order (b + z_0·w_0 + z_1·w_1 + ...)
rather than a matrix product. A library matrix product may pick its blocking, and with it the order of
its additions, from the number of rows, so a coordinate's bits would depend on how many others share
the call; here every coordinate runs the same scalar code whatever the batch, which is what makes
cross-session batching bit-identical on a GPU (as the native kernel's lanes do on the CPU). The inputs
are at most 2H + 2 wide, so the sum costs no more than the product would on a memory-bound step.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

import torch

from service.lopt.config import OptimizerConfig
from service.lopt.preprocess import preprocess


def step_pointwise_(config: OptimizerConfig, weights: dict[str, torch.Tensor], grads: torch.Tensor,
                    hc: torch.Tensor, out_state: torch.Tensor, out_updates: torch.Tensor) -> None:
    """One step for every coordinate of `grads` (N,) and `hc` (N, L, 2, H): the new state (in hc's dtype)
    into `out_state`, the updates into `out_updates`."""
    x = preprocess(grads.to(torch.float32), config.preprocess, config.preprocess_p)
    state = hc.to(torch.float32)
    hidden = config.hidden_size
    inp = x
    for layer in range(config.num_layers):
        h, c = state[:, layer, 0], state[:, layer, 1]
        w, b = weights[f"cell.{layer}.weight"], weights[f"cell.{layer}.bias"]
        gates = _affine([inp, h], w, b)
        i = torch.sigmoid(gates[:, :hidden])
        f = torch.sigmoid(gates[:, hidden:2 * hidden])
        g = torch.tanh(gates[:, 2 * hidden:3 * hidden])
        o = torch.sigmoid(gates[:, 3 * hidden:])
        c_new = f * c + i * g
        h_new = o * torch.tanh(c_new)
        out_state[:, layer, 0].copy_(h_new)
        out_state[:, layer, 1].copy_(c_new)
        inp = h_new
    out = _affine([inp], weights["head.weight"], weights["head.bias"])
    out_updates.copy_(out[:, 0] * config.output_scale)


def _affine(parts: list[torch.Tensor], w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """b + [parts] @ w.T as a sum over input columns in order: (N, sum of widths) -> (N, out)."""
    acc = b.unsqueeze(0)
    k = 0
    for part in parts:
        for j in range(part.shape[1]):
            acc = acc + part[:, j:j + 1] * w[:, k]
            k += 1
    return acc


_compiled: dict[str, Callable[..., None]] = {}
_lock = threading.Lock()


def compiled(config: OptimizerConfig) -> Callable[..., None]:
    """`step_pointwise_` for this architecture (the config bound), compiled once for every batch size:
    shapes are dynamic. torch compiles on the first call for each device and state dtype."""
    key = repr(config)
    with _lock:
        if key not in _compiled:
            fn = torch.compile(functools.partial(step_pointwise_, config), dynamic=True, fullgraph=True)
            _compiled[key] = functools.partial(_one_at_a_time, fn)
        return _compiled[key]


def _one_at_a_time(fn: Callable[..., None], *args: torch.Tensor | dict[str, torch.Tensor]) -> None:
    # torch.compile is not thread-safe: the server steps from worker threads, and a call that compiles
    # (a new state dtype, a size that needs its own specialisation) while another thread is inside the
    # function fails. On one GPU the calls would queue on its stream anyway.
    with _lock:
        fn(*args)
