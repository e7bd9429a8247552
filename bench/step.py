"""Step speed: `python -m bench.step [--quick] [--json PATH] [--sizes N ...] [--threads N] [--no-remote] [--device D]`.

For each size it times, in one run and round-robin (so that load from other processes falls on every
contender alike), the nn.LSTMCell reference (straightforward, and in cache-sized chunks), our
in-process step (as the server runs it: into the session's preallocated spare buffer; the pure
variant that allocates; a bfloat16 state), and a remote step through the SDK against a real
`l2o serve` on 127.0.0.1, in safetensors and in JSON. In the same
run it measures the machine's limits: a float32 matrix product's GFLOP/s and a large copy's GB/s, on
the same threads. From those, a step's floor per coordinate is

    limit_ns = max(flops per coordinate / GFLOP/s, state bytes per coordinate / copy GB/s)

(about 10,000 flops and 320 bytes for the default 2 x 20 LSTM; the copy reads and writes the state
once, as a step must). Times are medians, in nanoseconds per coordinate; a measurement whose samples
spread too much is re-measured. Up to 100,000 coordinates the step and the remote binary step are
also timed 8 calls back to back: round-robin, every call starts with its state out of the caches and
its threads asleep (as after a training step's own work); back to back shows the step with both warm.

With `--device cuda` everything runs on the GPU instead (sizes 100,000 to 10,000,000 by default): the
reference and our step (the torch definition, service/lopt/lstm.py) on the device, the limits from the
device's float32 matrix product and copy, and `l2o serve` with L2O_STEP_DEVICE=cuda. Rows that only
mean something on the CPU (the one-thread and chunked references) are left out there.

Per run it also measures start-up (the kernel's warm-up in a fresh process, cold and cached, and
`l2o serve` from process start to ready) and a training loop as a user runs it (`training_loop`).

Adding a measurement is adding a function:
- per size: a function in SIZE_MEASUREMENTS, `(bench, n) -> zero-argument callable | None`, whose
  median time per coordinate becomes that key of the size's row (None: not measured, null in JSON);
- per run: a function in RUN_MEASUREMENTS, `(bench) -> JSON value`, stored under its key.
Resources that live for the whole run (a server, a client) go on `bench.stack` (an ExitStack) and
`bench.shared`.
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
from bench.server import OPTIMIZER, Server
from client import Client
from service.lopt import Checkpoint, CoordinatewiseLSTM, LSTMState, OptimizerConfig, init, kernel, state_nbytes

SIZES = (10_000, 100_000, 1_000_000)
GPU_SIZES = (100_000, 1_000_000, 10_000_000)
JSON_MAX_COORDS = 100_000
PRETRAINED = Path(__file__).resolve().parent.parent / "service" / "pretrained"
REFERENCE_CHUNK = 16_384
BACK_TO_BACK, BACK_TO_BACK_MAX_COORDS = 8, 100_000
NOISY_SPREAD = 0.25      # interquartile range / median above which a measurement is taken again
MAX_EXTRA_ROUNDS = 2


@dataclass
class Bench:
    config: OptimizerConfig
    weights: dict[str, torch.Tensor]
    repeats: int
    quick: bool
    no_remote: bool = False
    device: torch.device = torch.device("cpu")
    sizes: tuple[int, ...] = SIZES
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
            self._inputs[(n, dtype)] = (grads.to(self.device), LSTMState(hc.to(dtype).to(self.device)))
        return self._inputs[(n, dtype)]

    def reference(self) -> ReferenceLSTM:
        if "reference" not in self.shared:
            self.shared["reference"] = ReferenceLSTM(self.config, self.weights).to(self.device)
        return self.shared["reference"]

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"


# --- per-size measurements: each returns the call to time, or None when it does not apply ---

def reference_ns(bench: Bench, n: int) -> Callable[[], object]:
    grads, state = bench.inputs(n)
    return lambda: bench.reference().step(grads, state.hc)


def reference_1thread_ns(bench: Bench, n: int) -> Callable[[], object] | None:
    """The reference on one thread: torch's threads wait at every operation's barrier, which makes
    the two-thread reference collapse when other processes hold the cores; one thread does not."""
    if bench.on_gpu:
        return None
    grads, state = bench.inputs(n)

    def call() -> object:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return bench.reference().step(grads, state.hc)
        finally:
            torch.set_num_threads(threads)
    return call


def reference_chunked_ns(bench: Bench, n: int) -> Callable[[], object] | None:
    if bench.on_gpu:   # chunks the size of a CPU cache only add kernel launches on a GPU
        return None
    grads, state = bench.inputs(n)
    return lambda: bench.reference().step(grads, state.hc, chunk=REFERENCE_CHUNK)


def reference_into_ns(bench: Bench, n: int) -> Callable[[], object] | None:
    """The chunked reference writing into buffers made once, like the server's step (`step_ns`)."""
    if bench.on_gpu:
        return None
    grads, state = bench.inputs(n)
    out = (torch.empty(n), torch.empty(state.hc.shape))
    return lambda: bench.reference().step(grads, state.hc, chunk=REFERENCE_CHUNK, out=out)


def step_ns(bench: Bench, n: int) -> Callable[[], object]:
    """The step the server runs: the new state into the session's spare buffer (double buffering,
    as the memory store does), so no step allocates."""
    return _double_buffered(bench, n, torch.float32)


def step_pure_ns(bench: Bench, n: int) -> Callable[[], object]:
    """What `service.lopt.step` runs under no_grad: a new state tensor each call, inputs untouched."""
    grads, state = bench.inputs(n)
    return lambda: kernel.step_inference(bench.config, bench.weights, grads, state)


def step_bf16_ns(bench: Bench, n: int) -> Callable[[], object]:
    """The server's step with a bfloat16 state: half the bytes stored and moved per coordinate."""
    return _double_buffered(bench, n, torch.bfloat16)


def _double_buffered(bench: Bench, n: int, dtype: torch.dtype) -> Callable[[], object]:
    grads, state = bench.inputs(n, dtype)
    buffers = [state.hc.clone(), torch.empty_like(state.hc)]
    updates = torch.empty(n, device=bench.device)

    def call() -> None:
        kernel.step_inference_(bench.config, bench.weights, grads, LSTMState(buffers[0]),
                               out_state=buffers[1], out_updates=updates)
        buffers.reverse()
    return call


def feature_mlp_ns(bench: Bench, n: int) -> Callable[[], object]:
    """The shipped feature MLP's server step (service/pretrained/general-mlp), double buffered as `step_ns`,
    on the same gradients: the second architecture against the LSTM."""
    if "feature_mlp" not in bench.shared:
        ckpt = Checkpoint.load(PRETRAINED / "general-mlp")
        bench.shared["feature_mlp"] = (ckpt.config, {k: v.to(bench.device) for k, v in ckpt.weights.items()})
    config, weights = bench.shared["feature_mlp"]
    grads, _ = bench.inputs(n)
    buffers = [init(config, n, device=bench.device).hc, init(config, n, device=bench.device).hc]
    updates = torch.empty(n, device=bench.device)

    def call() -> None:
        kernel.step_inference_(config, weights, grads, LSTMState(buffers[0]), out_state=buffers[1],
                               out_updates=updates)
        buffers.reverse()
    return call


def remote_binary_ns(bench: Bench, n: int) -> Callable[[], object] | None:
    """A step through the SDK (`client.sessions.step`, safetensors body) against a real `l2o serve` on
    127.0.0.1: encoding, HTTP both ways, the server's checks, step and commit, decoding the answer."""
    return _remote_step(bench, n, "safetensors")


def remote_json_ns(bench: Bench, n: int) -> Callable[[], object] | None:
    """The same in JSON, up to 100,000 coordinates (JSON is for small models and debugging)."""
    return _remote_step(bench, n, "json") if n <= JSON_MAX_COORDS else None


def _remote_step(bench: Bench, n: int, wire: str) -> Callable[[], object] | None:
    if bench.no_remote:
        return None
    client = remote_client(bench)
    session = client.sessions.create(OPTIMIZER, {"w": [n]})
    grads = {"w": bench.inputs(n)[0].cpu().numpy()}
    count = [0]

    def call() -> None:
        count[0] = client.sessions.step(session.id, step=count[0], grads=grads, wire=wire).step
    return call


def remote_client(bench: Bench) -> Client:
    """One `l2o serve` and one SDK client for the whole run."""
    if "client" not in bench.shared:
        workdir = Path(bench.stack.enter_context(tempfile.TemporaryDirectory(prefix="l2o-bench-step-")))
        server = bench.stack.enter_context(Server(workdir, env=server_env(bench)))
        bench.shared["server"] = server
        bench.shared["server_ready_s"] = server.ready_s
        bench.shared["client"] = bench.stack.enter_context(Client(server.url, api_key=server.admin_key,
                                                                  timeout=600))
    return bench.shared["client"]


def server_env(bench: Bench, **more: str) -> dict[str, str]:
    """`l2o serve` settings for the bench: its device, and room for the largest size measured."""
    most = max(bench.sizes)
    return {"L2O_SESSION_MAX_PER_KEY": "1000", "L2O_STEP_DEVICE": str(bench.device),
            "L2O_SESSION_MAX_COORDS": str(max(2 * most, 2_000_000)),
            "L2O_SESSION_MAX_STATE_BYTES": str(max(8 * state_nbytes(bench.config, most), 2 * 1024**3)), **more}


def step_back_to_back_ns(bench: Bench, n: int) -> Callable[[], object] | None:
    """The step, BACK_TO_BACK times in a row: what it costs with its state and code still in the caches
    and its threads awake, against the round-robin figure where every call starts cold."""
    return _back_to_back(step_ns(bench, n), n)


def remote_binary_back_to_back_ns(bench: Bench, n: int) -> Callable[[], object] | None:
    """The remote binary step, BACK_TO_BACK times in a row: a client stepping with nothing in between."""
    call = remote_binary_ns(bench, n)
    return None if call is None else _back_to_back(call, n)


def _back_to_back(call: Callable[[], object], n: int) -> Callable[[], object] | None:
    """Above BACK_TO_BACK_MAX_COORDS a call is long enough that starting cold is a small part of it."""
    if n > BACK_TO_BACK_MAX_COORDS:
        return None

    def calls() -> None:
        for _ in range(BACK_TO_BACK):
            call()
    calls.calls = BACK_TO_BACK   # type: ignore[attr-defined]  # measure_size divides by it
    return calls


SIZE_MEASUREMENTS: list[Callable[[Bench, int], Callable[[], object] | None]] = [
    reference_ns, reference_1thread_ns, reference_chunked_ns, reference_into_ns,
    step_ns, step_pure_ns, step_bf16_ns, feature_mlp_ns,
    remote_binary_ns, remote_json_ns,
    step_back_to_back_ns, remote_binary_back_to_back_ns,
]


# --- per-run measurements ---

def limit(bench: Bench) -> dict[str, float]:
    """The machine's float32 matrix-product GFLOP/s and large-copy GB/s (bytes copied per second: each
    is read once and written once), on torch's current threads."""
    size = (1024 if bench.quick else 2048) * (4 if bench.on_gpu else 1)
    x, y, out = (torch.randn(size, size, device=bench.device) for _ in range(3))
    mm = median_seconds(lambda: torch.mm(x, y, out=out), bench.repeats, bench.device)
    nbytes = (128 if bench.quick else 512) << (23 if bench.on_gpu else 20)   # beyond the last-level cache
    src = torch.ones(nbytes // 4, device=bench.device)
    dst = torch.zeros_like(src)
    copy = median_seconds(lambda: dst.copy_(src), bench.repeats, bench.device)
    return {"matmul_gflops": 2 * size**3 / mm / 1e9, "copy_gbs": nbytes / copy / 1e9}


def memory(bench: Bench) -> dict[str, Any]:
    feature = Checkpoint.load(PRETRAINED / "general-mlp").config
    return {"state_bytes_per_coord": {str(d).removeprefix("torch."): state_nbytes(bench.config, 1, d)
                                      for d in kernel.STATE_DTYPES},
            "feature_mlp_state_bytes_per_coord": {str(d).removeprefix("torch."): state_nbytes(feature, 1, d)
                                                  for d in kernel.STATE_DTYPES}}


def startup_s(bench: Bench) -> float:
    """kernel.warmup in a fresh process with an empty extension cache: what a first start costs (the build)."""
    cache = bench.stack.enter_context(tempfile.TemporaryDirectory())
    bench.shared["kernel_cache"] = cache
    return _warmup_in_subprocess(cache, bench.device)


def startup_cached_s(bench: Bench) -> float:
    """The same once the kernel is cached on disk: what every later start costs."""
    return _warmup_in_subprocess(bench.shared["kernel_cache"], bench.device)


def _warmup_in_subprocess(cache: str, device: torch.device) -> float:
    code = ("from service.lopt import OptimizerConfig; from service.lopt.kernel import warmup; "
            f"print(warmup(OptimizerConfig(), {str(device)!r}))")
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": cache}   # torch.utils.cpp_extension's build cache
    done = subprocess.run([sys.executable, "-c", code], env=env,
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


TRAIN_BATCH, TRAIN_INPUTS, TRAIN_CLASSES = 64, 100, 10


def training_loop(bench: Bench) -> dict[str, Any] | None:
    """A training loop as a user writes it, per size: a 100-h-h-10 ReLU MLP with about that many
    parameters, batch 64, cross-entropy, `zero_grad(); loss.backward(); opt.step()`, on torch's threads,
    with torch's Adam, LocalOptimizer and RemoteOptimizer (against the bench's `l2o serve`), round-robin.
    Per optimizer: ms per training step and its `opt.step()` alone in ns per parameter; beside them the
    in-process kernel on the same coordinates (in place, as LocalOptimizer steps), for the ratio the
    targets are held to (LocalOptimizer's step within 1.2x of it, and never slower than RemoteOptimizer's)."""
    if bench.on_gpu:
        return None
    from client import LocalOptimizer, RemoteOptimizer
    from service.lopt import Checkpoint

    checkpoint = Checkpoint(bench.config, bench.weights).to_bytes()
    return {str(n): _training_row(bench, n, checkpoint, LocalOptimizer, RemoteOptimizer) for n in bench.sizes}


def _training_row(bench: Bench, n: int, checkpoint: bytes, local: Any, remote: Any) -> dict[str, Any]:
    hidden = _hidden_for(n)
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(TRAIN_BATCH, TRAIN_INPUTS, generator=gen)
    y = torch.randint(TRAIN_CLASSES, (TRAIN_BATCH,), generator=gen)
    models, opts = {}, {}
    for name in ("adam", "local", "remote"):
        if name == "remote" and bench.no_remote:
            continue
        torch.manual_seed(0)
        models[name] = model = torch.nn.Sequential(
            torch.nn.Linear(TRAIN_INPUTS, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(), torch.nn.Linear(hidden, TRAIN_CLASSES))
        opts[name] = (torch.optim.Adam(model.parameters(), lr=1e-3) if name == "adam"
                      else local(model.parameters(), checkpoint=checkpoint) if name == "local"
                      else remote(model.parameters(), OPTIMIZER, client=remote_client(bench)))
    params = sum(p.numel() for p in models["adam"].parameters())
    grads, state = bench.inputs(params)
    hc = state.hc.clone()

    def kernel_step() -> None:
        kernel.step_inference_(bench.config, bench.weights, grads, LSTMState(hc))

    faults: list[int] = []

    def iteration(name: str) -> tuple[float, float]:
        model, opt = models[name], opts[name]
        faulted = server_page_faults(bench) if name == "remote" else None
        began = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        stepped = time.perf_counter()
        opt.step()
        done = time.perf_counter()
        if faulted is not None:
            faults.append(server_page_faults(bench) - faulted)
        return done - began, done - stepped

    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in (*models, "kernel")}
    for round_ in range(bench.repeats + 1):   # the first round warms up (sessions open, buffers allocated)
        for name in models:
            sample = iteration(name)
            if round_:
                samples[name].append(sample)
        began = time.perf_counter()
        kernel_step()
        if round_:
            samples["kernel"].append((time.perf_counter() - began,) * 2)
    for opt in opts.values():
        if hasattr(opt, "close"):
            opt.close()
    row: dict[str, Any] = {"params": params, "hidden": hidden}
    for name, got in samples.items():
        if name != "kernel":
            row[f"{name}_ms"] = statistics.median(t for t, _ in got) * 1e3
        row[f"{name}_step_ns"] = statistics.median(t for _, t in got) / params * 1e9
    row["local_over_kernel"] = row["local_step_ns"] / row["kernel_step_ns"]
    if "remote" in models:
        row["local_over_remote"] = row["local_step_ns"] / row["remote_step_ns"]
        # Fresh pages the server touched per step: buffers the allocator handed back to the OS and took again.
        row["remote_server_faults"] = statistics.median(faults[-bench.repeats:]) if faults else None
    return row


def server_page_faults(bench: Bench) -> int | None:
    """The bench's `l2o serve` process's minor page faults so far (Linux), else None."""
    try:
        with open(f"/proc/{bench.shared['server'].proc.pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[7])
    except (OSError, KeyError):
        return None


def _hidden_for(n: int) -> int:
    """The hidden width h whose 100-h-h-10 MLP has about n parameters: h^2 + 112h + 10 = n."""
    return max(1, round((-112 + (112**2 + 4 * max(n - 10, 0)) ** 0.5) / 2))


def environment(bench: Bench) -> dict[str, Any]:
    return {"threads": torch.get_num_threads(), "backend": kernel.backend(bench.config, bench.device),
            "device": torch.cuda.get_device_name(bench.device) if bench.on_gpu else "cpu",
            "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "load_avg": os.getloadavg(), "command": " ".join([Path(sys.executable).name, "-m", "bench.step",
                                                               *sys.argv[1:]])}


def server_ready_s(bench: Bench) -> float | None:
    """`l2o serve` from process start to its first ready answer (imports, database, kernel warm-up)."""
    if bench.no_remote:
        return None
    remote_client(bench)
    return bench.shared["server_ready_s"]


RUN_MEASUREMENTS: dict[str, Callable[[Bench], Any]] = {
    "environment": environment, "limit": limit, "memory": memory, "startup_s": startup_s,
    "startup_cached_s": startup_cached_s, "server_ready_s": server_ready_s, "training_loop": training_loop,
}


# --- timing ---

def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device = torch.device("cpu")) -> float:
    fn()
    return statistics.median(_once(fn, device)[0] for _ in range(repeats))


def _once(fn: Callable[[], object], device: torch.device = torch.device("cpu")) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds (all threads) for one call; on a GPU, until the
    device has finished it."""
    gpu = device.type == "cuda"
    if gpu:
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if gpu:
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def spread(samples: list[float]) -> float:
    if len(samples) < 4:
        return (max(samples) - min(samples)) / statistics.median(samples)
    q = statistics.quantiles(samples, n=4)
    return (q[2] - q[0]) / q[1]


def measure_size(bench: Bench, n: int) -> dict[str, Any]:
    """Each measurement's median wall time per coordinate (its key), the spread of its samples and its
    median CPU time per coordinate over all threads (`..._cpu_ns`: what the step costs the machine,
    which other processes' load changes far less than the wall time). A callable with a `calls`
    attribute makes that many steps per timed call."""
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
                wall, cpu = _once(timed[name], bench.device)
                walls[name].append(wall)
                cpus[name].append(cpu)
        pending = [name for name in pending if spread(walls[name]) > NOISY_SPREAD]
        if not pending:
            break
    row: dict[str, Any] = {name: None for name in calls}
    for name in timed:
        stem = name.removesuffix("_ns")
        coords = n * getattr(timed[name], "calls", 1)
        row[name] = statistics.median(walls[name]) / coords * 1e9
        row[f"{stem}_cpu_ns"] = statistics.median(cpus[name]) / coords * 1e9
        row[f"{stem}_spread"] = round(spread(walls[name]), 3)
    row.update(agreement(bench, n))
    return row


def agreement(bench: Bench, n: int) -> dict[str, float]:
    grads, state = bench.inputs(n)
    u, new = kernel.step_inference(bench.config, bench.weights, grads, state)
    u_ref, hc_ref = bench.reference().step(grads, state.hc, chunk=None if bench.on_gpu else REFERENCE_CHUNK)
    return {"max_abs_diff_updates": float((u - u_ref).abs().max()),
            "max_abs_diff_state": float((new.hc - hc_ref).abs().max())}


def derive(result: dict[str, Any], bench: Bench) -> None:
    """Ratios within the run: speed-up over the reference, distance from the machine's limit."""
    lim = result["limit"]
    floor = max(bench.flops_per_coord / lim["matmul_gflops"],
                state_nbytes(bench.config, 1) / lim["copy_gbs"])
    for row in result["sizes"].values():
        row["limit_ns"] = floor
        if row.get("feature_mlp_ns") and row.get("step_ns"):
            row["feature_mlp_over_step"] = row["feature_mlp_ns"] / row["step_ns"]
        if row.get("step_ns"):
            # Like for like: nn.LSTMCell's best variant against our step, both allocating their outputs.
            best = min(row[k] for k in ("reference_ns", "reference_1thread_ns", "reference_chunked_ns") if row.get(k))
            row["speedup"] = best / row["step_pure_ns"]
            if row.get("reference_into_ns"):   # and both writing into given buffers
                row["speedup_into"] = row["reference_into_ns"] / row["step_ns"]
            row["times_limit"] = row["step_ns"] / floor
        for wire in ("binary", "json"):
            if row.get(f"remote_{wire}_ns") and row.get("step_ns"):
                row[f"remote_{wire}_over_step"] = row[f"remote_{wire}_ns"] / row["step_ns"]
        if row.get("remote_binary_back_to_back_ns") and row.get("step_back_to_back_ns"):
            row["remote_binary_over_step_back_to_back"] = (row["remote_binary_back_to_back_ns"]
                                                           / row["step_back_to_back_ns"])


def table(result: dict[str, Any]) -> str:
    cols = [("coords", None), ("reference", "reference_ns"), ("ref 1 thread", "reference_1thread_ns"),
            ("ref chunked", "reference_chunked_ns"), ("ref into", "reference_into_ns"),
            ("step", "step_ns"), ("step pure", "step_pure_ns"), ("step bf16", "step_bf16_ns"),
            ("feature mlp", "feature_mlp_ns"), ("mlp / step", "feature_mlp_over_step"),
            ("limit", "limit_ns"), ("pure/best ref", "speedup"),
            ("ref into/step", "speedup_into"), ("x limit", "times_limit"),
            ("remote bin", "remote_binary_ns"), ("bin / step", "remote_binary_over_step"),
            ("remote json", "remote_json_ns"), ("json / step", "remote_json_over_step")]
    ratios = ("speedup", "speedup_into", "times_limit", "remote_binary_over_step", "remote_json_over_step",
              "feature_mlp_over_step")
    lines = ["  ".join(f"{c:>13}" for c, _ in cols)]
    for n, row in result["sizes"].items():
        cells = [f"{int(n):>13,}"]
        for _, key in cols[1:]:
            v = row.get(key)
            cells.append(f"{'-':>13}" if v is None else f"{v:>12.2f}x" if key in ratios
                         else f"{v:>13.1f}")
        lines.append("  ".join(cells))
    for n, row in result["sizes"].items():
        cpu = ", ".join(f"{label} {row[key.removesuffix('_ns') + '_cpu_ns']:.0f}" for label, key in cols[1:9]
                        if row.get(key) is not None)
        lines.append(f"CPU ns per coordinate, all threads, at {int(n):,}: {cpu}")
    for n, row in result["sizes"].items():
        if row.get("remote_binary_over_step_back_to_back"):
            lines.append(f"{BACK_TO_BACK} calls back to back at {int(n):,}: step {row['step_back_to_back_ns']:.1f}, "
                         f"remote bin {row['remote_binary_back_to_back_ns']:.1f} ns per coordinate: "
                         f"{row['remote_binary_over_step_back_to_back']:.2f}x")
    for row in (result.get("training_loop") or {}).values():
        lines.append(
            f"training loop, {row['params']:,} params (100-{row['hidden']}-{row['hidden']}-10, batch {TRAIN_BATCH}), "
            f"ms per step: Adam {row['adam_ms']:.1f}, Local {row['local_ms']:.1f}"
            + (f", Remote {row['remote_ms']:.1f}" if "remote_ms" in row else "")
            + f"; opt.step() ns/param: Local {row['local_step_ns']:.0f}, kernel {row['kernel_step_ns']:.0f} "
            f"(Local/kernel {row['local_over_kernel']:.2f}x)"
            + (f", Remote {row['remote_step_ns']:.0f} (Local/Remote {row['local_over_remote']:.2f}x)"
               if "remote_step_ns" in row else "")
            + (f"; server page faults per remote step {row['remote_server_faults']:.0f}"
               if row.get("remote_server_faults") is not None else ""))
    lim, env = result["limit"], result["environment"]
    where = env.get("device", "cpu") if env.get("device", "cpu") != "cpu" else f"{env['threads']} threads"
    lines.append(f"ns per coordinate, medians; limit from {lim['matmul_gflops']:.1f} GFLOP/s and "
                 f"{lim['copy_gbs']:.2f} GB/s on {where}; backend {env['backend']}; "
                 + (f"start-up {result['startup_s']:.2f} s cold, {result['startup_cached_s']:.3f} s cached; "
                    if result.get("startup_s") is not None and result.get("startup_cached_s") is not None else "")
                 + f"state {result['memory']['state_bytes_per_coord']} bytes/coord (feature MLP "
                 f"{result['memory'].get('feature_mlp_state_bytes_per_coord')})")
    if result.get("server_ready_s") is not None:
        lines.append(f"l2o serve: process start to ready in {result['server_ready_s']:.2f} s "
                     "(kernel warm-up included)")
    return "\n".join(lines)


def run(sizes: tuple[int, ...], repeats: int, quick: bool, no_remote: bool = False,
        device: torch.device = torch.device("cpu"), skip: frozenset[str] = frozenset(),
        progress: Callable[[dict[str, Any]], None] = lambda result: None) -> dict[str, Any]:
    """Every measurement but those in `skip`; `progress` sees the result after each one (a long run
    that is cut short keeps what it measured)."""
    config = OptimizerConfig()
    net = CoordinatewiseLSTM(config, generator=torch.Generator().manual_seed(0))
    bench = Bench(config, {k: v.detach().to(device) for k, v in net.weights().items()}, repeats, quick, no_remote,
                  device, sizes)
    with bench.stack:
        result: dict[str, Any] = {}
        for key, fn in RUN_MEASUREMENTS.items():
            if key in skip:
                result[key] = None
                continue
            print(f"measuring {key}", file=sys.stderr, flush=True)
            result[key] = fn(bench)
            progress(result)
        result["sizes"] = {}
        for n in sizes:
            print(f"measuring {n:,} coordinates", file=sys.stderr, flush=True)
            result["sizes"][str(n)] = measure_size(bench, n)
            progress(result)
        result["environment"]["load_avg_end"] = os.getloadavg()
    derive(result, bench)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller limit probes (smoke test)")
    parser.add_argument("--sizes", type=int, nargs="+",
                        help="coordinates per step (default 10,000 to 1,000,000; on a GPU 100,000 to 10,000,000)")
    parser.add_argument("--repeats", type=int, help="timed calls per measurement (default 7, 3 with --quick)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own, one per core)")
    parser.add_argument("--no-remote", action="store_true", help="skip everything that needs `l2o serve`")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: where every step runs")
    optional = [k for k in RUN_MEASUREMENTS if k not in ("environment", "limit", "memory")]
    parser.add_argument("--skip", nargs="+", default=[], choices=optional, metavar="NAME",
                        help=f"per-run measurements to leave out, of: {', '.join(optional)}")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device here")
    sizes = tuple(args.sizes or (GPU_SIZES if device.type == "cuda" else SIZES))
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 7)
    def write(result: dict[str, Any]) -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2) + "\n")

    result = run(sizes, repeats, args.quick, args.no_remote, device, frozenset(args.skip), write)
    print(table(result))
    write(result)
    return result


if __name__ == "__main__":
    main()
