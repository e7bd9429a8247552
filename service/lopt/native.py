"""The fused CPU step (lstm_step.cpp) as a torch operator: built by torch.utils.cpp_extension, one build
per architecture and CPU type, cached in torch's extension folder ($TORCH_EXTENSIONS_DIR).

The C++ source is specialised at compile time to the config's sizes (hidden units, layers, inputs), so
every loop bound is a constant the compiler unrolls, and built for the host's CPU (-march=native). The
build's name carries a hash of the CPU's model and feature flags, so a cache shared by machines of
different CPU types never hands one of them code built for another. Without a compiler `load` raises
NativeError (once per architecture, logged) and the caller runs the torch path.

Kept beside the torch path for speed: bench/step.py measures it at several times nn.LSTMCell's best.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import platform
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from service.lopt.config import OptimizerConfig

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("lstm_step.cpp")
# -fopenmp: at::parallel_for is a header template that runs on one thread unless the caller is compiled
# with OpenMP (torch's parallel backend here); measured at a million coordinates: 2 threads 222 ns/coord
# without it, the same as 1 thread.
FLAGS = ("-O3", "-fno-math-errno", "-fopenmp")


class NativeError(RuntimeError):
    """The fused kernel cannot be built or loaded here (no compiler, unsupported platform)."""


def cpu_key() -> str:
    """A short hash of the CPU's model and feature flags: -march=native code runs only where they match."""
    try:
        with open("/proc/cpuinfo") as f:
            text = "".join([ln for ln in f if ln.startswith(("model name", "flags"))][:2])
    except OSError:
        text = platform.processor() + platform.machine()
    return hashlib.sha256(text.encode()).hexdigest()[:10]


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

    def name(self, march: str) -> str:
        tag = march.replace("-", "_").replace(".", "_")
        return f"l2o_lstm_{self.hidden}x{self.layers}x{self.inputs}{'l' if self.log_sign else 'n'}_{tag}_{cpu_key()}"


@contextlib.contextmanager
def _builder_flock(build_dir: Path) -> Iterator[None]:
    """cpp_extension marks a build in progress with a plain `lock` file and waits for it to go away: a
    build killed midway (a Ctrl-C on the first `l2o serve`) leaves it behind and every later start waits
    forever. An flock, which the kernel drops when its holder dies, goes around it: whoever holds the
    flock is the only builder alive, so a `lock` file it finds is stale and is removed."""
    try:
        import fcntl
    except ImportError:   # not POSIX: cpp_extension's own lock alone
        yield
        return
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / "l2o.flock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            (build_dir / "lock").unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class NativeKernel:
    """One loaded operator: packs weights into its layout and runs steps."""

    def __init__(self, arch: Arch, march: str = "native") -> None:
        self.arch = arch
        name = arch.name(march)
        from torch.utils import cpp_extension

        defines = [f"-DHID={arch.hidden}", f"-DNL={arch.layers}", f"-DNIN={arch.inputs}",
                   f"-DLOG_SIGN={int(arch.log_sign)}", f"-DL2O_NS={name}"]
        try:
            with _builder_flock(Path(cpp_extension._get_build_directory(name, verbose=False))):
                cpp_extension.load(name, [str(SOURCE)], extra_cflags=[*FLAGS, f"-march={march}", *defines],
                                   is_python_module=False, verbose=False)
        except Exception as exc:   # no compiler, no ninja, a failed build: all mean the torch path
            raise NativeError(f"building {SOURCE.name} failed: {str(exc).strip()[-2000:]}") from exc
        self.ops = getattr(torch.ops, name)
        self.lanes = self.ops.lanes()
        self.unit_block = self.ops.unit_block()   # the C++ source picks it for the host's registers
        self._packed: dict[tuple, tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]] = {}
        self._lock = threading.Lock()

    def pack(self, weights: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell weights as the C++ loop reads them: per layer, per block of `unit_block` hidden units, the
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
            hc_in: torch.Tensor, hc_out: torch.Tensor, updates: torch.Tensor) -> None:
        """grads: float32 (N,) contiguous; hc_in, hc_out: contiguous, same dtype (may be one tensor)."""
        packed, head = self.pack(weights)
        self.ops.step(grads, hc_in, packed, head, float(config.preprocess_p), float(config.output_scale),
                      hc_out, updates)


_kernels: dict[tuple, NativeKernel | NativeError] = {}   # by (hidden, layers, inputs, preprocess, march)
_build_lock = threading.Lock()


def load(config: OptimizerConfig, march: str = "native") -> NativeKernel:
    """The kernel for `config`'s architecture, built on first use; raises NativeError (remembered, and
    logged once). `march` picks the instruction set (the host's by default; e.g. x86-64-v3 for AVX2)."""
    key = (config.hidden_size, config.num_layers, config.input_size, config.preprocess, march)
    found = _kernels.get(key)
    if found is None:
        with _build_lock:
            found = _kernels.get(key)
            if found is None:
                try:
                    found = NativeKernel(Arch.of(config), march)
                except NativeError as exc:
                    found = exc
                    log.warning("native LSTM kernel unavailable, steps run on the torch path: %s", exc)
                _kernels[key] = found
    if isinstance(found, NativeError):
        raise found
    return found
