"""A learned optimizer as a torch.optim.Optimizer: RemoteOptimizer steps through the service, LocalOptimizer
runs the same registry version in this process. Given the same gradients they make the same updates, bit
for bit, and their state_dicts are interchangeable.

    with RemoteOptimizer(model.parameters(), optimizer="general-mlp", client=Client()) as opt:
        for x, y in data:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()                           # sends every gradient, applies θ ← θ + update in place
        torch.save(opt.state_dict(), "opt.pt")   # includes the server-side LSTM state and the step count
    # leaving the block deleted the session
    opt2 = RemoteOptimizer(model.parameters(), optimizer="general-mlp", client=Client())
    opt2.load_state_dict(torch.load("opt.pt"))   # the next step resumes the run in a new session

What the optimizer updates: the parameters that have a gradient at its first step, and any that gain one
later (or arrive with add_param_group), each under its name (from named_parameters) or "group.index". The
session is opened at the first step, so building an optimizer and loading a state_dict cost no round trip.
A parameter of the session that has no gradient at some step is sent a zero gradient (the LSTM sees the
step) and left as it is, like torch's own optimizers leave it.

torch.optim's conventions hold: `lr` (default 1.0) multiplies the learned update and `weight_decay`
(default 0) is decoupled, as in AdamW, so a step is `θ ← θ·(1 − lr·weight_decay) + lr·update`; both are
set in the constructor or per param group, and every scheduler of torch.optim.lr_scheduler drives `lr`
(OneCycleLR and CyclicLR with `cycle_momentum=False`: there is no momentum to cycle). The LSTM sees the
raw gradients whatever `lr` is. `close()`, or leaving a `with` block, frees the session; an optimizer
that is garbage-collected unclosed frees it too.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self

import torch

from client._body import AnswerBuffer
from client._client import Client
from client._exceptions import APIResponseError, NotFoundError
from client.types import STATE_DTYPES, CheckpointFile, SessionState, sha256_hex

STATE_KEY = "l2o"
STATE_FORMAT = "l2o-optimizer-state/1"
# The options a param group may set, with their defaults.
GROUP_OPTIONS = ("lr", "weight_decay")
# What torch.optim.lr_scheduler writes into a group beside lr: a group may carry them in again.
SCHEDULER_KEYS = ("initial_lr", "max_lr", "min_lr")

log = logging.getLogger(__name__)

Shapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class OptimizerState:
    """What resumes a run: the pinned version, the step count, and the LSTM state of every coordinate."""

    optimizer: str
    version: int
    digest: str
    step: int
    shapes: Shapes                # the session's parameters, in the order their coordinates are laid out
    hc: torch.Tensor              # (coordinates, layers, (h, c), hidden), float32 (exactly the values held)
    state_dtype: str = "float32"  # what the session keeps them in: float32, bfloat16 or float16

    def to_dict(self) -> dict[str, Any]:
        """Plain values and one tensor, so torch.save / torch.load(weights_only=True) round-trip it."""
        return {"format": STATE_FORMAT, "optimizer": self.optimizer, "version": self.version, "digest": self.digest,
                "step": self.step, "names": list(self.shapes), "shapes": [list(s) for s in self.shapes.values()],
                "hc": self.hc, "state_dtype": self.state_dtype}

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> OptimizerState:
        if entry.get("format") != STATE_FORMAT:
            raise ValueError(f"the state_dict's {STATE_KEY!r} entry has format {entry.get('format')!r}, "
                             f"expected {STATE_FORMAT!r}")
        shapes = {str(n): tuple(int(d) for d in s) for n, s in zip(entry["names"], entry["shapes"], strict=True)}
        hc = torch.as_tensor(entry["hc"], dtype=torch.float32)
        if hc.shape[:1] != (n_coords(shapes),):
            raise ValueError(f"the state holds {hc.shape[0]} coordinates, its shapes {n_coords(shapes)}")
        state_dtype = str(entry.get("state_dtype", "float32"))
        if state_dtype not in STATE_DTYPES:
            raise ValueError(f"the state_dict's state_dtype must be one of {STATE_DTYPES}, got {state_dtype!r}")
        return cls(str(entry["optimizer"]), int(entry["version"]), str(entry["digest"]), int(entry["step"]),
                   shapes, hc, state_dtype)

    def to_session_state(self) -> SessionState:
        return SessionState(self.optimizer, self.version, self.digest, self.step, self.shapes, self.hc.numpy(),
                            self.state_dtype)

    @classmethod
    def from_session_state(cls, s: SessionState) -> OptimizerState:
        return cls(s.optimizer, s.version, s.digest, s.step, dict(s.shapes), torch.from_numpy(s.hc),
                   s.state_dtype)

    def remap(self, shapes: Shapes) -> OptimizerState:
        """The state for a session over `shapes`: rows of parameters kept, zeros (a fresh LSTM state) for new
        ones. Refused when a kept parameter changed shape."""
        changed = [n for n in self.shapes if n in shapes and shapes[n] != self.shapes[n]]
        if changed:
            raise ValueError(f"parameters changed shape since the state was made: {changed[:5]}")
        offsets, at = {}, 0
        for name, shape in self.shapes.items():
            offsets[name] = (at, at + math.prod(shape))
            at += math.prod(shape)
        rows = []
        for name, shape in shapes.items():
            if name in offsets:
                rows.append(self.hc[offsets[name][0]:offsets[name][1]])
            else:
                rows.append(self.hc.new_zeros((math.prod(shape), *self.hc.shape[1:])))
        return OptimizerState(self.optimizer, self.version, self.digest, self.step, dict(shapes), torch.cat(rows),
                              self.state_dtype)


def check_state_dtype(state_dtype: str) -> None:
    if state_dtype not in STATE_DTYPES:
        raise ValueError(f"state_dtype must be one of {', '.join(STATE_DTYPES)}, got {state_dtype!r}")


def check_option(name: str, value: Any) -> None:
    try:
        ok = math.isfinite(float(value)) and float(value) >= 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def n_coords(shapes: Shapes) -> int:
    return sum(math.prod(s) for s in shapes.values())


class Backend(Protocol):
    """Where the LSTM runs: a server session or this process."""

    def open(self, shapes: Shapes, state: OptimizerState | None) -> None: ...
    def step(self, step: int, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...
    def export(self) -> OptimizerState: ...
    def close(self) -> None: ...


class LearnedOptimizer(torch.optim.Optimizer):
    """The torch side both optimizers share; a Backend does the stepping."""

    def __init__(self, params: Iterable[Any], backend: Backend, *, lr: float = 1.0, weight_decay: float = 0.0) -> None:
        check_option("lr", lr)
        check_option("weight_decay", weight_decay)
        super().__init__(params, defaults={"lr": lr, "weight_decay": weight_decay})
        self._backend = backend
        self._shapes: Shapes | None = None            # the open session's layout
        self._pending: OptimizerState | None = None   # from load_state_dict, opened at the next step
        self._count = 0
        # Holds the backend, never the optimizer, so collecting the optimizer runs it.
        self._finalizer = weakref.finalize(self, close_quietly, backend)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if isinstance(param_group, dict):
            unknown = sorted(set(param_group) - {"params", "param_names", *GROUP_OPTIONS, *SCHEDULER_KEYS})
            if unknown:
                raise ValueError(f"{type(self).__name__} has no param group option {', '.join(map(repr, unknown))}: "
                                 f"its options are {' and '.join(GROUP_OPTIONS)}")
            for name in GROUP_OPTIONS:
                if name in param_group:
                    check_option(name, param_group[name])
        super().add_param_group(param_group)

    @property
    def step_count(self) -> int:
        """Steps applied so far."""
        return self._count

    def named_params(self) -> list[tuple[str, torch.Tensor]]:
        return [(name, p) for name, p, _ in self._grouped_params()]

    def _grouped_params(self) -> list[tuple[str, torch.Tensor, dict[str, Any]]]:
        out, seen = [], set()
        for g, group in enumerate(self.param_groups):
            names = group.get("param_names") or [f"{g}.{i}" for i in range(len(group["params"]))]
            for name, p in zip(names, group["params"], strict=True):
                if name in seen:
                    raise ValueError(f"two parameters are named {name!r}: give each param group distinct names")
                seen.add(name)
                out.append((name, p, group))
        return out

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grouped = self._grouped_params()
        params = [(n, p) for n, p, _ in grouped]
        with_grad = {n: p for n, p in params if p.grad is not None}
        if not with_grad:
            return loss  # nothing to do, as with torch's optimizers after zero_grad()
        for name, p in with_grad.items():
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients ({name!r})")
        self._ensure_session(params, with_grad)
        grads = {n: with_grad[n].grad if n in with_grad else torch.zeros(shape) for n, shape in self._shapes.items()}
        updates = self._backend.step(self._count, grads)
        # One foreach call per (lr, weight_decay) as torch's own optimizers do: six add_ calls, each with its
        # dtype conversion, were a tenth of LocalOptimizer's step at 10k coordinates (bench.step's loop).
        by_options: dict[tuple[float, float], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for name, p, group in grouped:
            if name in with_grad:
                params_, updates_ = by_options.setdefault((group["lr"], group["weight_decay"]), ([], []))
                params_.append(p)
                u = updates[name]
                if u.dtype != p.dtype or u.device != p.device:
                    u = u.to(device=p.device, dtype=p.dtype)
                updates_.append(u if u.shape == p.shape else u.view_as(p))
        for (lr, decay), (params_, updates_) in by_options.items():
            if decay:
                torch._foreach_mul_(params_, 1 - lr * decay)
            torch._foreach_add_(params_, updates_, alpha=lr)
        self._count += 1
        return loss

    def _ensure_session(self, params: list[tuple[str, torch.Tensor]], with_grad: dict[str, torch.Tensor]) -> None:
        base = self._shapes if self._shapes is not None else (self._pending.shapes if self._pending else {})
        wanted = dict(base)
        for name, p in params:
            if name in with_grad and name not in wanted:
                wanted[name] = tuple(p.shape)
        if self._shapes is not None and wanted == self._shapes:
            return
        if self._shapes is not None:   # parameters joined: carry the state over, fresh rows for the new ones
            state = self._backend.export().remap(wanted)
        elif self._pending is not None:
            state = self._pending.remap(wanted)
        else:
            state = None
        self._backend.open(wanted, state)
        self._shapes, self._pending = wanted, None

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        state = self._backend.export() if self._shapes is not None else self._pending
        out[STATE_KEY] = state.to_dict() if state is not None else None
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if STATE_KEY not in state_dict:
            raise ValueError(f"not the state_dict of an l2o optimizer: it has no {STATE_KEY!r} entry "
                             f"(keys: {sorted(state_dict)})")
        entry = state_dict[STATE_KEY]
        state = OptimizerState.from_dict(entry) if entry is not None else None
        before = [{k: group[k] for k in GROUP_OPTIONS} for group in self.param_groups]
        super().load_state_dict({k: v for k, v in state_dict.items() if k != STATE_KEY})
        # A state_dict saved before lr and weight_decay existed has groups without them (torch's loader
        # replaces each group by the saved one): they keep the values this optimizer was built with.
        for group, options in zip(self.param_groups, before, strict=True):
            for k, v in options.items():
                group.setdefault(k, v)
        if self._shapes is not None:
            self._backend.close()
        self._shapes, self._pending = None, state
        self._count = state.step if state is not None else 0

    def close(self) -> None:
        """Free the state the optimizer holds (for RemoteOptimizer, delete its server session). A later step
        opens a new session from a fresh state; load a state_dict first to continue the run instead."""
        if self._shapes is not None:
            self._backend.close()
            self._shapes = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def close_quietly(backend: Backend) -> None:
    """Close a collected optimizer's backend. An exception here could only be printed, and the cause is
    usually harmless (the client was closed first, the server is gone): the server's idle expiry frees
    what this misses."""
    try:
        backend.close()
    except Exception as exc:
        log.debug("could not close a collected optimizer's session: %s", exc)


# --- through the service ----------------------------------------------------------------------------------

class RemoteSession:
    def __init__(self, client: Client, reference: str, state_dtype: str = "float32") -> None:
        self.client = client
        self.reference = reference
        self.state_dtype = state_dtype
        self.session_id: str | None = None
        self.answers = AnswerBuffer()  # the updates are applied before the next step reads into it

    def open(self, shapes: Shapes, state: OptimizerState | None) -> None:
        if state is None:
            session = self.client.sessions.create(self.reference, shapes, state_dtype=self.state_dtype)
        else:
            # The state names its own version; resuming on it (not on what the reference means today) is what
            # makes load_state_dict continue the run exactly.
            session = self.client.sessions.resume(state.to_session_state())
        self.close()
        self.session_id = session.id

    def step(self, step: int, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        result = self.client.sessions.step(self.session_id, step=step, grads=grads, into=self.answers)
        if result.step != step + 1:
            raise APIResponseError(f"the server answered step {step} with step count {result.step}, not {step + 1}")
        return {name: torch.from_numpy(u) for name, u in result.updates.items()}

    def export(self) -> OptimizerState:
        return OptimizerState.from_session_state(self.client.sessions.state(self.session_id))

    def close(self) -> None:
        if self.session_id is not None:
            try:
                self.client.sessions.delete(self.session_id)
            except NotFoundError:
                pass  # expired or lost: it is gone either way
            self.session_id = None


class RemoteOptimizer(LearnedOptimizer):
    """A torch optimizer whose steps run on an l2o server (see the module docstring).

    `optimizer` is a registry reference (`name`, `name:3`, `name@alias`), resolved when the session opens
    and pinned for the run. `client` defaults to `Client()` (L2O_URL, L2O_API_KEY). `lr` scales the
    learned update, `weight_decay` shrinks the parameters (decoupled), both per group too. `state_dtype`
    "bfloat16" or "float16" has the server keep the LSTM state in half the bytes (a resumed state keeps
    the dtype it was made with)."""

    def __init__(self, params: Iterable[Any], optimizer: str, *, client: Client | None = None,
                 lr: float = 1.0, weight_decay: float = 0.0, state_dtype: str = "float32") -> None:
        check_state_dtype(state_dtype)
        self.client = client or Client()
        super().__init__(params, RemoteSession(self.client, optimizer, state_dtype), lr=lr, weight_decay=weight_decay)

    @property
    def session_id(self) -> str | None:
        """The server session, once the first step has opened it."""
        return self._backend.session_id


# --- in this process -----------------------------------------------------------------------------------------

class LocalSession:
    """The server's step, run here: the same kernel on the same float32 vector in the same order."""

    def __init__(self, checkpoint: CheckpointFile, state_dtype: str = "float32") -> None:
        from service import lopt  # the learned-optimizer core: torch only, no web framework
        from service.lopt.tensors import all_finite

        self.lopt = lopt
        self.all_finite = all_finite
        loaded = lopt.Checkpoint.from_bytes(checkpoint.data, expected_sha256=checkpoint.sha256)
        self.config = loaded.config
        self.weights = {k: v.to(torch.float32).contiguous() for k, v in loaded.weights.items()}
        self.checkpoint = checkpoint
        self.state_dtype = state_dtype
        self.shapes: Shapes = {}
        self.hc: torch.Tensor | None = None
        self.count = 0

    def open(self, shapes: Shapes, state: OptimizerState | None) -> None:
        if state is not None and state.digest != self.checkpoint.sha256:
            raise ValueError(f"the state was made by {state.optimizer}:{state.version} "
                             f"(sha256 {state.digest[:12]}...), not by this optimizer's {self.checkpoint.reference} "
                             f"(sha256 {self.checkpoint.sha256[:12]}...)")
        n = n_coords(shapes)
        expected = self.config.state_shape(n)
        if state is not None and tuple(state.hc.shape) != expected:
            raise ValueError(f"the state tensor has shape {list(state.hc.shape)}, "
                             f"this optimizer needs {list(expected)}")
        self.shapes = dict(shapes)
        if state is not None:
            self.state_dtype = state.state_dtype   # as the server does: a resumed state keeps its dtype
        dtype = getattr(torch, self.state_dtype)
        # Stepped in place, into buffers kept for the run: fresh memory for each step's state cost as much as
        # the step itself at a million coordinates (bench/step.py, training-loop rows).
        self.hc = (state.hc.to(dtype, copy=True).contiguous() if state is not None
                   else self.lopt.init(self.config, n, dtype=dtype).hc)
        self.flat, self.updates = torch.empty(n), torch.empty(n)
        sizes, shapes = [math.prod(s) for s in self.shapes.values()], list(self.shapes.values())
        self.grad_views = [v.view(s) for v, s in zip(self.flat.split(sizes), shapes, strict=True)]
        self.update_views = {name: v.view(s) for name, v, s in zip(self.shapes, self.updates.split(sizes), shapes,
                                                                    strict=True)}
        self.count = state.step if state is not None else 0

    def step(self, step: int, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The updates, as views of a buffer the next step overwrites (the caller applies them at once)."""
        # One foreach copy into shaped views of the flat buffer converts dtype and device on the way; a
        # reshape, a conversion and a cat per parameter cost about 30 µs a step more (10k coordinates).
        torch._foreach_copy_(self.grad_views, [grads[name].detach() for name in self.shapes])
        if not self.all_finite(self.flat):
            name = next(n for n, g in zip(self.shapes, self.grad_views, strict=True) if not self.all_finite(g))
            raise ValueError(f"the gradient of {name!r} has NaN or infinite values (as float32)")
        with torch.no_grad():
            _, state = self.lopt.step(self.config, self.weights, self.flat, self.lopt.LSTMState(self.hc),
                                      out_state=self.hc, out_updates=self.updates)
        self.hc = state.hc
        self.count = step + 1
        return self.update_views

    def export(self) -> OptimizerState:
        c = self.checkpoint
        return OptimizerState(c.name, c.version, c.sha256, self.count, dict(self.shapes),
                              self.hc.to(torch.float32, copy=True), self.state_dtype)

    def close(self) -> None:
        self.shapes, self.hc, self.flat, self.updates, self.grad_views, self.update_views = {}, None, None, None, [], {}


class LocalOptimizer(LearnedOptimizer):
    """The same learned optimizer, run in this process (offline, no round trips).

    Either download a registry version, `LocalOptimizer(params, optimizer="general-mlp", client=Client())`,
    or load a checkpoint: `LocalOptimizer(params, checkpoint=client.optimizers.download(ref))`, or a
    safetensors file / bytes. Needs the `service.lopt` core of this package (torch only), whose kernel is
    the one the server steps with: that is what makes the updates equal, bit for bit."""

    def __init__(self, params: Iterable[Any], optimizer: str | None = None, *, client: Client | None = None,
                 checkpoint: CheckpointFile | bytes | str | Path | None = None, lr: float = 1.0,
                 weight_decay: float = 0.0, state_dtype: str = "float32") -> None:
        check_state_dtype(state_dtype)
        if (optimizer is None) == (checkpoint is None):
            raise ValueError("give either optimizer= (a registry reference, downloaded) or checkpoint=")
        if checkpoint is None:
            checkpoint = (client or Client()).optimizers.download(optimizer)
        elif not isinstance(checkpoint, CheckpointFile):
            data = bytes(checkpoint) if isinstance(checkpoint, bytes | bytearray) else Path(checkpoint).read_bytes()
            # Not from a registry: its state_dict resumes only on a LocalOptimizer of the same bytes.
            checkpoint = CheckpointFile("local", 0, sha256_hex(data), data)
        self.checkpoint = checkpoint
        super().__init__(params, LocalSession(checkpoint, state_dtype), lr=lr, weight_decay=weight_decay)
