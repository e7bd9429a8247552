"""The fused CPU kernel (lstm_step.c): compiled for one architecture, cached on disk, called through ctypes.

The C source is specialised at compile time to the config's sizes (hidden units, layers, inputs), so
every loop bound is a constant the compiler unrolls. It is built with the host's C compiler for the
host's CPU (-march=native), once per architecture and machine; the shared object is cached under
$L2O_KERNEL_CACHE (default ~/.cache/l2o/kernels), keyed by a hash of the source, the flags and the CPU,
so a restart loads it in milliseconds. Without a compiler `load` raises NativeError and the caller
falls back to the torch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from service.lopt.config import OptimizerConfig

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("lstm_step.c")
FLAGS = ("-O3", "-std=gnu11", "-fPIC", "-shared", "-pthread", "-fno-math-errno")
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
DEFAULT_SPIN_US = 2000
MAX_SEGMENTS = 4096  # as lstm_step.c allows per call


class NativeError(RuntimeError):
    """The fused kernel cannot be built or loaded here (no compiler, unsupported platform)."""


@dataclass(frozen=True)
class Arch:
    """What the compiled code depends on: sizes only; p and the output scale are call arguments."""

    hidden: int
    layers: int
    inputs: int
    log_sign: bool

    @classmethod
    def of(cls, config: OptimizerConfig) -> Arch:
        return cls(config.hidden_size, config.num_layers, config.input_size, config.preprocess == "log_sign")

    def defines(self) -> list[str]:
        return [f"-DHID={self.hidden}", f"-DNL={self.layers}", f"-DNIN={self.inputs}",
                f"-DLOG_SIGN={int(self.log_sign)}"]


def spin_us() -> int:
    """L2O_KERNEL_SPIN_US: how long the kernel's helper threads wait awake for the next step before they
    sleep. Waking a sleeping core costs milliseconds on some virtual machines, more than a small step;
    spinning costs that core's time while it waits. Default 2000 (2 ms); 0 sleeps at once."""
    raw = os.environ.get("L2O_KERNEL_SPIN_US", "").strip()
    if not raw:
        return DEFAULT_SPIN_US
    if not raw.isdigit():
        raise ValueError(f"L2O_KERNEL_SPIN_US must be a whole number of microseconds, got {raw!r}")
    return int(raw)


def cache_dir() -> Path:
    configured = os.environ.get("L2O_KERNEL_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "l2o" / "kernels"


def compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise NativeError("no C compiler found (install gcc or set CC)")
    return cc


def cpu_fingerprint() -> str:
    """-march=native code must not be loaded on another CPU that shares the cache folder."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))][:2]
        return "".join(lines)
    except OSError:
        import platform

        return platform.processor() + platform.machine()


def build(arch: Arch, march: str = "native") -> Path:
    """The compiled shared object for `arch`, compiling it if the cache does not hold it yet. `march`
    picks the instruction set (the host's by default; e.g. x86-64-v3 for AVX2 only)."""
    cc = compiler()
    source = SOURCE.read_bytes()
    command = [cc, *FLAGS, f"-march={march}", *arch.defines()]
    key = hashlib.sha256(source + " ".join(command).encode() + cpu_fingerprint().encode()).hexdigest()[:16]
    name = f"lstm_step-{arch.hidden}x{arch.layers}-{march}-{key}.so"
    target = cache_dir() / name
    if target.exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError:   # e.g. a read-only home: a private temporary folder still spares the compile per step
        owner = os.getuid() if hasattr(os, "getuid") else 0
        target = Path(tempfile.gettempdir()) / f"l2o-kernels-{owner}" / name
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
    # Compile beside the target and rename, so concurrent processes never load a half-written file.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([*command, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise NativeError(f"compiling {SOURCE.name} failed: {done.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    except (OSError, subprocess.SubprocessError) as exc:
        raise NativeError(f"compiling {SOURCE.name} failed: {exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


class NativeKernel:
    """One loaded shared object: packs weights into its layout and runs steps."""

    def __init__(self, arch: Arch, path: Path) -> None:
        self.arch = arch
        self.lib = ctypes.CDLL(str(path))
        self.lib.l2o_lanes.restype = ctypes.c_int
        many = self.lib.l2o_step_many
        many.restype = ctypes.c_int
        many.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                         ctypes.c_void_p, ctypes.c_float, ctypes.c_float, ctypes.c_float, ctypes.c_float,
                         ctypes.c_int, ctypes.c_void_p]
        self.fn_many = many
        self.lib.l2o_set_spin_us.argtypes = [ctypes.c_longlong]
        self.lib.l2o_set_spin_us(spin_us())
        self.lanes = self.lib.l2o_lanes()
        self.unit_block = self.lib.l2o_unit_block()   # the C source picks it for the host's registers
        self.unit_coords = self.lib.l2o_unit_coords()   # coordinates a thread claims at a time
        self._packed: dict[tuple, tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]] = {}
        self._lock = threading.Lock()

    def pack(self, weights: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell weights as the C loop reads them: per layer, per block of `unit_block` hidden units, the
        block's 4 * unit_block gate biases, then for each input (layer input, then h) its 4 * unit_block
        weights; gates i, f, g, o, the sigmoid gates (i, f, o) halved, which is exact.

        Cached by the tensors' identity and version counter: an in-place edit (optimizer.step,
        copy_, load_state_dict) bumps the version and repacks. The entry holds the tensors, so their ids
        cannot be reused while it lives. (Writes through `.data` bypass the version counter; they would
        be missed, as they are by autograd.)"""
        key = tuple(sorted((name, id(w), w._version) for name, w in weights.items()))
        with self._lock:
            hit = self._packed.get(key)
        if hit is not None:
            return hit[1], hit[2]
        h, jb = self.arch.hidden, self.unit_block
        parts = []
        for layer in range(self.arch.layers):
            w = weights[f"cell.{layer}.weight"].detach().to(torch.float32).cpu()
            b = weights[f"cell.{layer}.bias"].detach().to(torch.float32).cpu()
            for start in range(0, h, jb):
                rows = torch.cat([torch.arange(start, start + jb) + gate * h for gate in range(4)])
                scale = torch.full((4 * jb,), 0.5)
                scale[2 * jb: 3 * jb] = 1.0
                block = torch.cat([b[rows].unsqueeze(0), w[rows].t()]) * scale
                parts.append(block.reshape(-1))
        packed = torch.cat(parts).contiguous()
        head = torch.cat([weights["head.weight"].detach().reshape(-1), weights["head.bias"].detach().reshape(-1)])
        head = head.to(torch.float32).cpu().contiguous()
        with self._lock:
            if len(self._packed) >= 8:
                self._packed.clear()
            self._packed[key] = (dict(weights), packed, head)
        return packed, head

    def run(self, config: OptimizerConfig, weights: dict[str, torch.Tensor], grads: torch.Tensor,
            hc_in: torch.Tensor, hc_out: torch.Tensor, updates: torch.Tensor, threads: int) -> bool:
        """grads: float32 (N,) contiguous; hc_in, hc_out: contiguous, same dtype (may be one tensor).
        Returns whether every gradient was finite."""
        return self.run_many(config, weights, [(grads, hc_in, hc_out, updates)], threads)[0]

    def run_many(self, config: OptimizerConfig, weights: dict[str, torch.Tensor],
                 segments: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
                 threads: int) -> list[bool]:
        """One call over many (grads, hc_in, hc_out, updates) segments, each as `run` takes them, all of
        one state dtype: the threads share the work of every segment. Returns, per segment, whether
        its gradients were all finite (the kernel checks them as it reads them)."""
        packed, head = self.pack(weights)
        p = float(config.preprocess_p)
        finite: list[bool] = []
        for start in range(0, len(segments), MAX_SEGMENTS):
            part = segments[start:start + MAX_SEGMENTS]
            ns = (ctypes.c_int64 * len(part))(*(g.shape[0] for g, _, _, _ in part))
            ptrs = (ctypes.c_void_p * (4 * len(part)))(*(t.data_ptr() for seg in part for t in seg))
            flags = (ctypes.c_int32 * len(part))()
            rc = self.fn_many(len(part), ns, ptrs, DTYPE_CODES[part[0][1].dtype], packed.data_ptr(),
                              head.data_ptr(), math.exp(-p), math.exp(p), p, float(config.output_scale),
                              max(1, threads), flags)
            if rc != 0:
                raise MemoryError(f"the native step over {len(part)} segments failed (code {rc})")
            finite.extend(flag == 0 for flag in flags)
        return finite


_kernels: dict[tuple, NativeKernel | NativeError] = {}   # by (hidden, layers, inputs, preprocess)
_build_lock = threading.Lock()


def set_spin_us(us: int) -> None:
    """Set every loaded kernel's helper spin (see spin_us); 0 also stops the helpers spinning now."""
    for found in list(_kernels.values()):
        if isinstance(found, NativeKernel):
            found.lib.l2o_set_spin_us(us)


def load(config: OptimizerConfig) -> NativeKernel:
    """The kernel for `config`'s architecture, built on first use; raises NativeError (remembered)."""
    key = (config.hidden_size, config.num_layers, config.input_size, config.preprocess)
    found = _kernels.get(key)
    if found is None:
        with _build_lock:
            found = _kernels.get(key)
            if found is None:
                arch = Arch.of(config)
                try:
                    found = NativeKernel(arch, build(arch))
                except (NativeError, OSError) as exc:
                    found = exc if isinstance(exc, NativeError) else NativeError(str(exc))
                    log.warning("native LSTM kernel unavailable, steps run on the torch path: %s", found)
                _kernels[key] = found
    if isinstance(found, NativeError):
        raise found
    return found
