"""The inference kernel: the no-grad step that the server runs.

    updates, new_state = step_inference(config, weights, grads, state)          # pure
    updates, state = step_inference_(config, weights, grads, state)             # writes into state.hc
    updates, state = step_inference_(config, weights, grads, state, out_state=buffer, out_updates=u)
    step_inference_many(config, weights, [Segment(grads, state, out_state, out_updates), ...])   # one call

Three implementations sit behind these functions:

- native (CPU): one fused C loop (lstm_step.c, built by `native`) that keeps each tile of coordinates
  in registers from the gate products to the new state, on `torch.get_num_threads()` threads. It is
  built, or loaded from its on-disk cache, by `warmup(config)` at start-up, so no request waits for a
  compiler.
- compiled (CUDA; L2O_KERNEL=compiled forces it on any device): `pointwise.step_pointwise_` through
  torch.compile, one call over every coordinate; `warmup(config, device)` compiles it at start-up,
  one variant per state dtype.
- torch (other devices, or a CPU without a C compiler; L2O_KERNEL=torch forces it): `step_autograd`
  over fixed blocks of BLOCK coordinates, the last one zero-padded, so every matrix product has the
  same shape.

Batch invariance: a coordinate's update and new state are bit-identical whatever other coordinates
share the call, as long as its slice starts at a multiple of BLOCK (`padded_len` gives the aligned
length a batcher should reserve per slice; `step_inference_many` lays its segments out that way). The
native and compiled kernels are stronger: every coordinate runs the same scalar code (lanes on the
CPU, threads on a GPU; pointwise.py says why), so there its bits do not depend on its offset at all.
Bits can differ between the implementations and between CPU and GPU types (the native code is
compiled for the host CPU); each agrees with `step_autograd` to float32 tolerance.

State precision: `state.hc` may be float32, bfloat16 or float16. The step computes in float32 and
writes the new state in the dtype it came in, so a half-precision state halves the bytes stored and
moved per coordinate.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from service.lopt import feature_mlp, native, pointwise
from service.lopt.config import OptimizerConfig
from service.lopt.functional import step_autograd
from service.lopt.network import weight_shapes
from service.lopt.state import LSTMState
from service.lopt.tensors import all_finite

BLOCK = 4096
STATE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BACKENDS = ("auto", "native", "compiled", "torch")


def padded_len(n: int) -> int:
    """n rounded up to a whole number of blocks: the room a batcher gives a slice of n coordinates so
    that the next slice starts on a block boundary."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return -(-n // BLOCK) * BLOCK


def requested_backend() -> str:
    choice = os.environ.get("L2O_KERNEL", "auto").strip().lower() or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"L2O_KERNEL must be one of {BACKENDS}, got {choice!r}")
    return choice


def backend(config: OptimizerConfig, device: torch.device | str = "cpu") -> str:
    """'native', 'compiled' or 'torch': what a step on `device` runs. The first call for an architecture
    may compile the native kernel (that is what `warmup` is for)."""
    choice = requested_backend()
    kind = torch.device(device).type
    if config.architecture == "feature_mlp":
        return "torch"  # the native and compiled kernels are the LSTM's; the feature MLP is plain torch
    if choice in ("torch", "compiled"):
        return choice
    if kind == "cuda":
        return "compiled"
    if kind != "cpu":
        return "torch"
    try:
        native.load(config)
    except native.NativeError:
        if choice == "native":
            raise
        return "torch"
    return "native"


def warmup(config: OptimizerConfig, device: torch.device | str = "cpu") -> float:
    """Build (or load from the cache) everything a step of this architecture on `device` needs and run
    small steps per state dtype; returns the seconds it took. Call it at start-up."""
    start = time.perf_counter()
    backend(config, device)
    weights = {name: torch.zeros(shape, device=device) for name, shape in weight_shapes(config).items()}
    for n in (3 * 16 + 1, 2 * BLOCK + 3):   # two sizes: a compiled step must not specialise on the first
        grads = torch.linspace(-1.0, 1.0, n, device=device)
        for dtype in STATE_DTYPES:
            state = LSTMState(torch.zeros(config.state_shape(n), dtype=dtype, device=device))
            step_inference(config, weights, grads, state)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def step_inference(config: OptimizerConfig, weights: dict[str, torch.Tensor], grads: torch.Tensor,
                   state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
    """One step for every coordinate; returns (updates, new_state). Leaves `grads` and `state` as they
    were (a caller may retry from the old state)."""
    hc = _check_state(config, grads, state.hc)
    out = torch.empty(hc.shape, dtype=hc.dtype, device=hc.device)
    return step_inference_(config, weights, grads, state, out_state=out)


def step_inference_(config: OptimizerConfig, weights: dict[str, torch.Tensor], grads: torch.Tensor,
                    state: LSTMState, *, out_state: torch.Tensor | None = None,
                    out_updates: torch.Tensor | None = None) -> tuple[torch.Tensor, LSTMState]:
    """The same step, writing the new state into `out_state` (default: `state.hc` itself, in place)
    and the updates into `out_updates` (default: a new tensor).

    For a server that keeps preallocated state buffers: step in place when the old state is not
    needed again, or double-buffer (old in one buffer, new into the other) when it is, e.g. to retry.
    Fresh memory is expensive at scale (at a million coordinates the operating system's zeroing of a
    new state costs about as much as the step itself), so reusing buffers is the fast path.
    `out_state` must be contiguous with the state's shape, dtype and device; it may be `state.hc`
    itself but must not otherwise overlap it.
    """
    hc = _check_state(config, grads, state.hc)
    _check_weights(config, weights)
    n = hc.shape[0]
    if out_state is None:
        if not state.hc.is_contiguous():
            raise ValueError("an in-place step needs a contiguous state tensor")
        out_state = state.hc
    _check_out("out_state", out_state, hc.shape, hc.dtype, hc.device)
    if out_updates is None:
        out_updates = torch.empty(n, dtype=torch.float32, device=hc.device)
    _check_out("out_updates", out_updates, (n,), torch.float32, hc.device)
    g = grads.to(torch.float32).contiguous()
    if n:
        _run(backend(config, hc.device), config, weights, g, hc.contiguous(), out_state, out_updates)
    return out_updates, LSTMState(out_state)


def _run(kind: str, config: OptimizerConfig, weights: dict[str, torch.Tensor], grads: torch.Tensor,
         hc: torch.Tensor, out_state: torch.Tensor, out_updates: torch.Tensor) -> None:
    if kind == "native":
        native.load(config).run(config, weights, grads, hc, out_state, out_updates, torch.get_num_threads())
        return
    with torch.no_grad():
        if kind == "compiled":
            pointwise.compiled(config)(weights, grads, hc, out_state, out_updates)
        else:
            _step_blocks(config, weights, grads, hc, out_state, out_updates)


@dataclass(frozen=True)
class Segment:
    """One caller's share of a batched step: its gradients and state in, where its results go."""

    grads: torch.Tensor
    state: LSTMState
    out_state: torch.Tensor
    out_updates: torch.Tensor


def step_inference_many(config: OptimizerConfig, weights: dict[str, torch.Tensor],
                        segments: Sequence[Segment]) -> list[bool]:
    """`step_inference_` for every segment in one call (e.g. concurrent sessions on one optimizer
    version): the threads share all segments' coordinates, and each segment's results are
    bit-identical to a call on that segment alone. Segments share one state dtype and device; each
    `out_state` follows `step_inference_`'s rules (it may be the segment's own state).

    Returns, per segment, whether its gradients were all finite. A segment with a NaN or infinite
    gradient still runs, but its results are meaningless: a caller must discard them (the server
    answers 422 and keeps the old state). The native kernel checks as it reads the gradients, at no
    extra pass over them."""
    if not segments:
        return []
    _check_weights(config, weights)
    dtype, device = segments[0].state.hc.dtype, segments[0].state.hc.device
    parts = []
    for i, seg in enumerate(segments):
        hc = _check_state(config, seg.grads, seg.state.hc)
        if hc.dtype != dtype or hc.device != device:
            raise ValueError(f"segment {i} has a {hc.dtype} state on {hc.device}; the first has {dtype} on {device}")
        n = hc.shape[0]
        _check_out("out_state", seg.out_state, hc.shape, dtype, device)
        _check_out("out_updates", seg.out_updates, (n,), torch.float32, device)
        if not hc.is_contiguous():
            raise ValueError(f"segment {i}: a batched step needs contiguous state tensors")
        parts.append((seg.grads.to(torch.float32).contiguous(), hc, seg.out_state, seg.out_updates))
    kind = backend(config, device)
    if kind == "native":
        return native.load(config).run_many(config, weights, parts, torch.get_num_threads())
    finite = [all_finite(g) for g, _, _, _ in parts]
    # One buffer for all segments. On the torch path every segment starts on a block boundary, so each
    # block holds one segment's coordinates and zeros, exactly as in a call on that segment alone; the
    # compiled step is pointwise, so there segments simply follow one another.
    size = padded_len if kind == "torch" else int
    offsets, total = [], 0
    for g, _, _, _ in parts:
        offsets.append(total)
        total += size(g.shape[0])
    grads = torch.zeros(total, device=device)
    hc = torch.zeros((total, *parts[0][1].shape[1:]), dtype=dtype, device=device)
    for start, (g, h, _, _) in zip(offsets, parts, strict=True):
        grads[start:start + g.shape[0]] = g
        hc[start:start + g.shape[0]] = h
    out_hc, out_u = torch.empty_like(hc), torch.empty(total, device=device)
    if total:
        _run(kind, config, weights, grads, hc, out_hc, out_u)
    for start, (g, _, o_state, o_updates) in zip(offsets, parts, strict=True):
        o_state.copy_(out_hc[start:start + g.shape[0]])
        o_updates.copy_(out_u[start:start + g.shape[0]])
    return finite


def _check_state(config: OptimizerConfig, grads: torch.Tensor, hc: torch.Tensor) -> torch.Tensor:
    if grads.dim() != 1 or not grads.dtype.is_floating_point:
        raise ValueError(f"grads must be a flat float tensor (n_coords,), got {grads.dtype} {tuple(grads.shape)}")
    shape = config.state_shape(grads.shape[0])
    if tuple(hc.shape) != shape:
        raise ValueError(f"state has shape {tuple(hc.shape)}, expected {shape} for {grads.shape[0]} coordinates")
    if hc.dtype not in STATE_DTYPES:
        raise ValueError(f"state dtype must be one of float32, bfloat16, float16, got {hc.dtype}")
    if grads.device != hc.device:
        raise ValueError(f"grads are on {grads.device} but the state is on {hc.device}")
    return hc


@functools.lru_cache(maxsize=64)
def _shapes(hidden: int, layers: int, inputs: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
    cfg = OptimizerConfig(hidden_size=hidden, num_layers=layers, preprocess="log_sign" if inputs == 2 else "none")
    return tuple(weight_shapes(cfg).items())


def _check_weights(config: OptimizerConfig, weights: dict[str, torch.Tensor]) -> None:
    shapes = (_shapes(config.hidden_size, config.num_layers, config.input_size) if config.architecture == "lstm"
              else weight_shapes(config).items())
    for name, shape in shapes:
        w = weights.get(name)
        if w is None or tuple(w.shape) != shape:
            raise ValueError(f"weight {name} must have shape {shape}, got "
                             f"{'nothing' if w is None else tuple(w.shape)}")


def _check_out(name: str, t: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype,
               device: torch.device) -> None:
    if tuple(t.shape) != tuple(shape) or t.dtype != dtype or t.device != device:
        raise ValueError(f"{name} must be {dtype} of shape {tuple(shape)} on {device}, "
                         f"got {t.dtype} {tuple(t.shape)} on {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def _step_blocks(config: OptimizerConfig, weights: dict[str, torch.Tensor], grads: torch.Tensor,
                 hc: torch.Tensor, out_state: torch.Tensor, out_updates: torch.Tensor) -> None:
    """The torch implementation: BLOCK coordinates per call, the last block zero-padded, so each matrix
    product sees one shape and a block's results do not depend on the other blocks."""
    n = grads.shape[0]
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        g, h = grads[start:stop], hc[start:stop]
        if stop - start < BLOCK:
            g = torch.cat([g, g.new_zeros(BLOCK - (stop - start))])
            h = torch.cat([h, h.new_zeros((BLOCK - (stop - start), *h.shape[1:]))])
        if config.architecture == "feature_mlp":
            u, new_h = feature_mlp.step(weights, g, h, config.output_scale, config.num_layers)
        else:
            u, new_h = step_autograd(config, weights, g, LSTMState(h))
            new_h = new_h.hc
        out_updates[start:stop] = u[: stop - start]
        out_state[start:stop] = new_h[: stop - start]
