"""The inference step: the no-grad step the server and LocalOptimizer run.

    updates, new_state = step_inference(config, weights, grads, state)          # pure
    updates, state = step_inference_(config, weights, grads, state)             # writes into state.hc
    updates, state = step_inference_(config, weights, grads, state, out_state=buffer, out_updates=u)

Two implementations sit behind these functions, picked by `kernel` ("auto", "native" or "torch"):

- native (CPU): lstm_step.cpp, a torch operator (native.py) that keeps each tile of coordinates in
  registers from the gate products to the new state, on torch's own threads. `warmup(config)` builds it
  (or loads it from torch's extension cache) at start-up, so no request waits for a compiler.
- torch (other devices, a CPU without a compiler, other architectures, or asked for): `step_autograd`,
  the definition itself (or feature_mlp.step), over chunks of CHUNK coordinates so that its temporaries
  stay small.

Each agrees with `step_autograd` to float32 tolerance. The native kernel's bits for a coordinate do not
depend on the other coordinates in the call, where it sits, or the number of threads.

State precision: `state.hc` may be float32, bfloat16 or float16. The step computes in float32 and
writes the new state in the dtype it came in, so a half-precision state halves the bytes stored and
moved per coordinate.
"""

from __future__ import annotations

import functools
import os
import time

import torch

from service.lopt import feature_mlp, native
from service.lopt.config import OptimizerConfig
from service.lopt.lstm import step_autograd
from service.lopt.network import weight_shapes
from service.lopt.state import LSTMState

CHUNK = 65536
STATE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
KERNELS = ("auto", "native", "torch")

# GNU OpenMP's thread pool (torch's CPU threads) does not survive a fork: a child forked after its parent ran
# a parallel region hangs in its own first one (measured with a plain torch op as well as this kernel). A
# child of a process that has stepped therefore runs on one thread, as torch's DataLoader workers do; a child
# of one that never stepped (the job processes' forkserver) keeps its threads.
_stepped = False


def _after_fork_in_child() -> None:
    if _stepped:
        torch.set_num_threads(1)


os.register_at_fork(after_in_child=_after_fork_in_child)


def backend(config: OptimizerConfig, device: torch.device | str = "cpu", kernel: str = "auto") -> str:
    """'native' or 'torch': what a step on `device` runs. The first call for an architecture may build
    the native kernel (that is what `warmup` is for); `kernel="native"` raises NativeError where it
    cannot be built."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "torch" or torch.device(device).type != "cpu" or config.architecture != "lstm":
        return "torch"   # the native kernel is the LSTM's; other architectures are plain torch
    try:
        native.load(config)
    except native.NativeError:
        if kernel == "native":
            raise
        return "torch"
    return "native"


def warmup(config: OptimizerConfig, device: torch.device | str = "cpu", kernel: str = "auto") -> float:
    """Build (or load from the cache) everything a step of this architecture on `device` needs and run a
    small step per state dtype; returns the seconds it took. Call it at start-up."""
    start = time.perf_counter()
    weights = {name: torch.zeros(shape, device=device) for name, shape in weight_shapes(config).items()}
    grads = torch.linspace(-1.0, 1.0, 49, device=device)
    for dtype in STATE_DTYPES:
        state = LSTMState(torch.zeros(config.state_shape(49), dtype=dtype, device=device))
        step_inference(config, weights, grads, state, kernel=kernel)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def step_inference(config: OptimizerConfig, weights: dict[str, torch.Tensor], grads: torch.Tensor,
                   state: LSTMState, *, kernel: str = "auto") -> tuple[torch.Tensor, LSTMState]:
    """One step for every coordinate; returns (updates, new_state). Leaves `grads` and `state` as they
    were (a caller may retry from the old state)."""
    hc = _check_state(config, grads, state.hc)
    out = torch.empty(hc.shape, dtype=hc.dtype, device=hc.device)
    return step_inference_(config, weights, grads, state, out_state=out, kernel=kernel)


def step_inference_(config: OptimizerConfig, weights: dict[str, torch.Tensor], grads: torch.Tensor,
                    state: LSTMState, *, out_state: torch.Tensor | None = None,
                    out_updates: torch.Tensor | None = None, kernel: str = "auto") -> tuple[torch.Tensor, LSTMState]:
    """The same step, writing the new state into `out_state` (default: `state.hc` itself, in place)
    and the updates into `out_updates` (default: a new tensor).

    For a caller that keeps preallocated state buffers: step in place when the old state is not
    needed again, or double-buffer (old in one buffer, new into the other) when it is, e.g. to retry.
    Fresh memory is expensive at scale (at a million coordinates the operating system's zeroing of a
    new state costs about as much as the step itself), so reusing buffers is the fast path.
    `out_state` must be contiguous with the state's shape, dtype and device; it may be `state.hc`
    itself but must not otherwise overlap it.
    """
    global _stepped
    hc = _check_state(config, grads, state.hc)
    _check_weights(config, weights)
    n = hc.shape[0]
    _stepped = _stepped or hc.device.type == "cpu"
    if out_state is None:
        if not state.hc.is_contiguous():
            raise ValueError("an in-place step needs a contiguous state tensor")
        out_state = state.hc
    _check_out("out_state", out_state, hc.shape, hc.dtype, hc.device)
    if out_updates is None:
        out_updates = torch.empty(n, dtype=torch.float32, device=hc.device)
    _check_out("out_updates", out_updates, (n,), torch.float32, hc.device)
    g = grads.to(torch.float32).contiguous()
    hc = hc.contiguous()
    if n and backend(config, hc.device, kernel) == "native":
        native.load(config).run(config, weights, g, hc, out_state, out_updates)
    elif n:
        with torch.no_grad():
            for start in range(0, n, CHUNK):
                part = slice(start, start + CHUNK)
                if config.architecture == "feature_mlp":
                    u, new = feature_mlp_step(config, weights, g[part], hc[part])
                else:
                    u, new = step_autograd(config, weights, g[part], LSTMState(hc[part]))
                    new = new.hc
                out_updates[part], out_state[part] = u, new
    return out_updates, LSTMState(out_state)


def feature_mlp_step(config: OptimizerConfig, weights: dict[str, torch.Tensor], grads: torch.Tensor,
                     hc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """feature_mlp.step with the config's settings: (updates, new state)."""
    return feature_mlp.step(weights, grads, hc, config.output_scale, config.num_layers, config.time_horizon,
                            bool(config.warmup), bool(config.relative_correction),
                            bool(config.correction_warmup), bool(config.memory_up_only))


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
