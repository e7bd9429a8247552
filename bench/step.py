"""Step speed: `python -m bench.step [--quick] [--json PATH] [--sizes N ...] [--threads N]`.

For each size it times, in one run and round-robin (so that load from other processes falls on every
contender alike), the nn.LSTMCell reference (straightforward, and in cache-sized chunks) and our
in-process step (pure, in place into preallocated buffers, and with a bfloat16 state). In the same
run it measures the machine's limits: a float32 matrix product's GFLOP/s and a large copy's GB/s, on
the same threads. From those, a step's floor per coordinate is

    limit_ns = max(flops per coordinate / GFLOP/s, state bytes per coordinate / copy GB/s)

(about 10,000 flops and 320 bytes for the default 2 x 20 LSTM; the copy reads and writes the state
once, as a step must). Times are medians, in nanoseconds per coordinate; a measurement whose samples
spread too much is re-measured.

Adding a measurement is adding a function:
- per size: a function in SIZE_MEASUREMENTS, `(bench, n) -> zero-argument callable | None`, whose
  median time per coordinate becomes that key of the size's row (None: not measured, null in JSON);
- per run: a function in RUN_MEASUREMENTS, `(bench) -> JSON value`, stored under its key.
Resources that live for the whole run (a server, a client) go on `bench.stack` (an ExitStack) and
`bench.shared`. The remote and batching entries are placeholders until their functions are written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.reference import ReferenceLSTM
from service.lopt import CoordinatewiseLSTM, LSTMState, OptimizerConfig, kernel, state_nbytes

SIZES = (10_000, 100_000, 1_000_000)
REFERENCE_CHUNK = 16_384
NOISY_SPREAD = 0.25      # interquartile range / median above which a measurement is taken again
MAX_EXTRA_ROUNDS = 2


@dataclass
class Bench:
    config: OptimizerConfig
    weights: dict[str, torch.Tensor]
    repeats: int
    quick: bool
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    shared: dict[str, Any] = field(default_factory=dict)
    _inputs: dict[tuple[int, torch.dtype], tuple[torch.Tensor, LSTMState]] = field(default_factory=dict)

    @property
    def flops_per_coord(self) -> int:
        cfg, h = self.config, self.config.hidden_size
        cells = sum(2 * 4 * h * ((cfg.input_size if layer == 0 else h) + h) for layer in range(cfg.num_layers))
        return cells + 2 * h

    def inputs(self, n: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, LSTMState]:
        """Gradients over many magnitudes and a random state of the typical size; one copy per size."""
        if (n, dtype) not in self._inputs:
            gen = torch.Generator().manual_seed(n)
            grads = torch.randn(n, generator=gen) * 10 ** (torch.rand(n, generator=gen) * 8 - 6)
            hc = torch.randn((n, self.config.num_layers, 2, self.config.hidden_size), generator=gen) * 0.5
            self._inputs[(n, dtype)] = (grads, LSTMState(hc.to(dtype)))
        return self._inputs[(n, dtype)]

    def reference(self) -> ReferenceLSTM:
        if "reference" not in self.shared:
            self.shared["reference"] = ReferenceLSTM(self.config, self.weights)
        return self.shared["reference"]


# --- per-size measurements: each returns the call to time, or None when it does not apply ---

def reference_ns(bench: Bench, n: int) -> Callable[[], object]:
    grads, state = bench.inputs(n)
    return lambda: bench.reference().step(grads, state.hc)


def reference_1thread_ns(bench: Bench, n: int) -> Callable[[], object]:
    """The reference on one thread: torch's threads wait at every operation's barrier, which makes
    the two-thread reference collapse when other processes hold the cores; one thread does not."""
    grads, state = bench.inputs(n)

    def call() -> object:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return bench.reference().step(grads, state.hc)
        finally:
            torch.set_num_threads(threads)
    return call


def reference_chunked_ns(bench: Bench, n: int) -> Callable[[], object]:
    grads, state = bench.inputs(n)
    return lambda: bench.reference().step(grads, state.hc, chunk=REFERENCE_CHUNK)


def step_ns(bench: Bench, n: int) -> Callable[[], object]:
    """What `service.lopt.step` runs under no_grad: a new state tensor each call, inputs untouched."""
    grads, state = bench.inputs(n)
    return lambda: kernel.step_inference(bench.config, bench.weights, grads, state)


def step_inplace_ns(bench: Bench, n: int) -> Callable[[], object]:
    """The opt-in variant a server with preallocated state buffers uses (double-buffered here)."""
    return _double_buffered(bench, n, torch.float32)


def step_bf16_inplace_ns(bench: Bench, n: int) -> Callable[[], object]:
    """The same with a bfloat16 state: half the bytes stored and moved per coordinate."""
    return _double_buffered(bench, n, torch.bfloat16)


def _double_buffered(bench: Bench, n: int, dtype: torch.dtype) -> Callable[[], object]:
    grads, state = bench.inputs(n, dtype)
    buffers = [state.hc.clone(), torch.empty_like(state.hc)]
    updates = torch.empty(n)

    def call() -> None:
        kernel.step_inference_(bench.config, bench.weights, grads, LSTMState(buffers[0]),
                               out_state=buffers[1], out_updates=updates)
        buffers.reverse()
    return call


def remote_binary_ns(bench: Bench, n: int) -> Callable[[], object] | None:
    """A step through the SDK against a real `l2o serve` on 127.0.0.1, binary body. Not yet wired."""
    return None


def remote_json_ns(bench: Bench, n: int) -> Callable[[], object] | None:
    """The same in JSON, up to 100,000 coordinates. Not yet wired."""
    return None


SIZE_MEASUREMENTS: list[Callable[[Bench, int], Callable[[], object] | None]] = [
    reference_ns, reference_1thread_ns, reference_chunked_ns,
    step_ns, step_inplace_ns, step_bf16_inplace_ns,
    remote_binary_ns, remote_json_ns,
]


# --- per-run measurements ---

def limit(bench: Bench) -> dict[str, float]:
    """The machine's float32 matrix-product GFLOP/s and large-copy GB/s (bytes copied per second: each
    is read once and written once), on torch's current threads."""
    size = 1024 if bench.quick else 2048
    x, y, out = torch.randn(size, size), torch.randn(size, size), torch.empty(size, size)
    mm = median_seconds(lambda: torch.mm(x, y, out=out), bench.repeats)
    nbytes = (128 if bench.quick else 512) << 20   # beyond the last-level cache
    src = torch.ones(nbytes // 4)
    dst = torch.zeros_like(src)
    copy = median_seconds(lambda: dst.copy_(src), bench.repeats)
    return {"matmul_gflops": 2 * size**3 / mm / 1e9, "copy_gbs": nbytes / copy / 1e9}


def memory(bench: Bench) -> dict[str, Any]:
    return {"state_bytes_per_coord": {str(d).removeprefix("torch."): state_nbytes(bench.config, 1, d)
                                      for d in kernel.STATE_DTYPES}}


def startup_s(bench: Bench) -> float:
    """kernel.warmup in a fresh process with an empty kernel cache: what a first start costs."""
    cache = bench.stack.enter_context(tempfile.TemporaryDirectory())
    bench.shared["kernel_cache"] = cache
    return _warmup_in_subprocess(cache)


def startup_cached_s(bench: Bench) -> float:
    """The same once the kernel is cached on disk: what every later start costs."""
    return _warmup_in_subprocess(bench.shared["kernel_cache"])


def _warmup_in_subprocess(cache: str) -> float:
    code = ("from service.lopt import OptimizerConfig; from service.lopt.kernel import warmup; "
            "print(warmup(OptimizerConfig()))")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "L2O_KERNEL_CACHE": cache},
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def batching(bench: Bench) -> dict[str, float] | None:
    """64 concurrent sessions x 1,000 coordinates, cross-session batching on and off. Not yet wired."""
    return None


def environment(bench: Bench) -> dict[str, Any]:
    return {"threads": torch.get_num_threads(), "backend": kernel.backend(bench.config),
            "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "load_avg": os.getloadavg(), "command": " ".join([Path(sys.executable).name, "-m", "bench.step",
                                                               *sys.argv[1:]])}


RUN_MEASUREMENTS: dict[str, Callable[[Bench], Any]] = {
    "environment": environment, "limit": limit, "memory": memory, "startup_s": startup_s,
    "startup_cached_s": startup_cached_s, "batching": batching,
}


# --- timing ---

def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    return statistics.median(_once(fn)[0] for _ in range(repeats))


def _once(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds (all threads) for one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def spread(samples: list[float]) -> float:
    if len(samples) < 4:
        return (max(samples) - min(samples)) / statistics.median(samples)
    q = statistics.quantiles(samples, n=4)
    return (q[2] - q[0]) / q[1]


def measure_size(bench: Bench, n: int) -> dict[str, Any]:
    """Each measurement's median wall time per coordinate (its key), the spread of its samples and its
    median CPU time per coordinate over all threads (`..._cpu_ns`: what the step costs the machine,
    which other processes' load changes far less than the wall time)."""
    calls = {fn.__name__: fn(bench, n) for fn in SIZE_MEASUREMENTS}
    timed = {name: call for name, call in calls.items() if call is not None}
    walls: dict[str, list[float]] = {name: [] for name in timed}
    cpus: dict[str, list[float]] = {name: [] for name in timed}
    for call in timed.values():
        call()
    pending = list(timed)
    for _round in range(1 + MAX_EXTRA_ROUNDS):
        for _ in range(bench.repeats):
            for name in pending:   # round-robin: a burst of load hits every contender
                wall, cpu = _once(timed[name])
                walls[name].append(wall)
                cpus[name].append(cpu)
        pending = [name for name in pending if spread(walls[name]) > NOISY_SPREAD]
        if not pending:
            break
    row: dict[str, Any] = {name: None for name in calls}
    for name in timed:
        stem = name.removesuffix("_ns")
        row[name] = statistics.median(walls[name]) / n * 1e9
        row[f"{stem}_cpu_ns"] = statistics.median(cpus[name]) / n * 1e9
        row[f"{stem}_spread"] = round(spread(walls[name]), 3)
    row.update(agreement(bench, n))
    return row


def agreement(bench: Bench, n: int) -> dict[str, float]:
    grads, state = bench.inputs(n)
    u, new = kernel.step_inference(bench.config, bench.weights, grads, state)
    u_ref, hc_ref = bench.reference().step(grads, state.hc, chunk=REFERENCE_CHUNK)
    return {"max_abs_diff_updates": float((u - u_ref).abs().max()),
            "max_abs_diff_state": float((new.hc - hc_ref).abs().max())}


def derive(result: dict[str, Any], bench: Bench) -> None:
    """Ratios within the run: speed-up over the reference, distance from the machine's limit."""
    lim = result["limit"]
    floor = max(bench.flops_per_coord / lim["matmul_gflops"],
                state_nbytes(bench.config, 1) / lim["copy_gbs"])
    for row in result["sizes"].values():
        row["limit_ns"] = floor
        if row.get("step_ns"):
            row["speedup"] = row["reference_ns"] / row["step_ns"]
            row["speedup_over_1thread_reference"] = row["reference_1thread_ns"] / row["step_ns"]
            row["speedup_over_chunked_reference"] = row["reference_chunked_ns"] / row["step_ns"]
            row["times_limit"] = row["step_ns"] / floor
        if row.get("step_inplace_ns"):
            row["speedup_inplace"] = row["reference_ns"] / row["step_inplace_ns"]
            row["times_limit_inplace"] = row["step_inplace_ns"] / floor


def table(result: dict[str, Any]) -> str:
    cols = [("coords", None), ("reference", "reference_ns"), ("ref 1 thread", "reference_1thread_ns"),
            ("ref chunked", "reference_chunked_ns"),
            ("step", "step_ns"), ("in place", "step_inplace_ns"), ("bf16 in place", "step_bf16_inplace_ns"),
            ("limit", "limit_ns"), ("speed-up", "speedup"), ("x limit", "times_limit"),
            ("remote bin", "remote_binary_ns"), ("remote json", "remote_json_ns")]
    lines = [" ".join(f"{c:>13}" for c, _ in cols)]
    for n, row in result["sizes"].items():
        cells = [f"{int(n):>13,}"]
        for _, key in cols[1:]:
            v = row.get(key)
            cells.append(f"{'-':>13}" if v is None else f"{v:>12.2f}x" if key in ("speedup", "times_limit")
                         else f"{v:>13.1f}")
        lines.append("  ".join(cells))
    for n, row in result["sizes"].items():
        cpu = ", ".join(f"{label} {row[key.removesuffix('_ns') + '_cpu_ns']:.0f}" for label, key in cols[1:7]
                        if row.get(key) is not None)
        lines.append(f"CPU ns per coordinate, all threads, at {int(n):,}: {cpu}")
    lim, env = result["limit"], result["environment"]
    lines.append(f"ns per coordinate, medians; limit from {lim['matmul_gflops']:.1f} GFLOP/s and "
                 f"{lim['copy_gbs']:.2f} GB/s on {env['threads']} threads; backend {env['backend']}; "
                 f"start-up {result['startup_s']:.2f} s cold, {result['startup_cached_s']:.3f} s cached; "
                 f"state {result['memory']['state_bytes_per_coord']} bytes/coord")
    return "\n".join(lines)


def run(sizes: tuple[int, ...], repeats: int, quick: bool) -> dict[str, Any]:
    config = OptimizerConfig()
    net = CoordinatewiseLSTM(config, generator=torch.Generator().manual_seed(0))
    bench = Bench(config, {k: v.detach() for k, v in net.weights().items()}, repeats, quick)
    with bench.stack:
        result: dict[str, Any] = {}
        for key, fn in RUN_MEASUREMENTS.items():
            print(f"measuring {key}", file=sys.stderr, flush=True)
            result[key] = fn(bench)
        result["sizes"] = {}
        for n in sizes:
            print(f"measuring {n:,} coordinates", file=sys.stderr, flush=True)
            result["sizes"][str(n)] = measure_size(bench, n)
        result["environment"]["load_avg_end"] = os.getloadavg()
    derive(result, bench)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller limit probes (smoke test)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--repeats", type=int, help="timed calls per measurement (default 7, 3 with --quick)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own, one per core)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 7)
    result = run(tuple(args.sizes), repeats, args.quick)
    print(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
