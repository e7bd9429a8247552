"""What the API answers, as typed objects. Each keeps the JSON it came from in `.raw`, so a field a newer
server adds is still there to read before this SDK learns its name."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from client import _safetensors

STATE_FORMAT = "l2o-session-state/1"
STATE_DTYPES = ("float32", "bfloat16", "float16")
STATE_DTYPE_OF = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}   # safetensors code -> name
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _build(cls: type, data: Mapping[str, Any], **convert: Any) -> Any:
    """An instance of dataclass `cls` from the fields of `data` it names, each passed through `convert`."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name == "raw" or f.name not in data:
            continue
        value = data[f.name]
        kwargs[f.name] = convert[f.name](value) if f.name in convert and value is not None else value
    return cls(**kwargs, raw=dict(data))


# --- the registry -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Version:
    name: str
    version: int
    reference: str
    sha256: str
    size: int
    source: str
    job_id: str | None = None
    aliases: list[str] = field(default_factory=list)
    created_at: datetime | None = None
    description: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] | None = None       # only in a version's own detail
    evaluation: dict[str, Any] | None = None   # only in a version's own detail
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Version:
        return _build(cls, data, created_at=_time)


@dataclass(frozen=True)
class Optimizer:
    name: str
    latest_version: int | None
    version_count: int
    aliases: dict[str, int] = field(default_factory=dict)
    created_at: datetime | None = None
    description: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    versions: list[Version] = field(default_factory=list)  # only from optimizers.get
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Optimizer:
        return _build(cls, data, created_at=_time, versions=lambda vs: [Version.from_json(v) for v in vs])


@dataclass(frozen=True)
class Alias:
    name: str
    alias: str
    version: int
    reference: str
    updated_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Alias:
        return _build(cls, data, updated_at=_time)


@dataclass(frozen=True)
class CheckpointFile:
    """A version's checkpoint bytes (safetensors, the config in its metadata), checked against their digest."""

    name: str
    version: int
    sha256: str
    data: bytes = field(repr=False)

    @property
    def reference(self) -> str:
        return f"{self.name}:{self.version}"

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes(self.data)
        return path


# --- sessions ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PinnedVersion:
    name: str
    version: int
    reference: str
    digest: str


@dataclass(frozen=True)
class Session:
    id: str
    optimizer: PinnedVersion
    shapes: dict[str, list[int]]
    n_coords: int
    step: int                     # steps applied so far: the number the next step must carry
    state_bytes: int = 0
    state_dtype: str = "float32"  # what the server keeps the LSTM state in
    created_at: datetime | None = None
    last_used_at: datetime | None = None
    expires_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Session:
        return _build(cls, data, optimizer=lambda o: PinnedVersion(**{k: o[k] for k in
                                                                      ("name", "version", "reference", "digest")}),
                      created_at=_time, last_used_at=_time, expires_at=_time)


@dataclass(frozen=True)
class StepResult:
    step: int                         # the session's count after this step: the number to send next
    updates: dict[str, np.ndarray]    # by parameter name, shaped like it: θ ← θ + update


@dataclass(frozen=True)
class SessionState:
    """A session's LSTM state and step count, as GET /v1/sessions/{id}/state sends it and
    POST /v1/sessions/resume takes it back."""

    optimizer: str
    version: int
    digest: str
    step: int
    shapes: dict[str, tuple[int, ...]]
    hc: np.ndarray                    # (coordinates, layers, (h, c), hidden), float32 (exactly the values held)
    state_dtype: str = "float32"      # what the session keeps them in: float32, bfloat16 or float16

    @property
    def reference(self) -> str:
        return f"{self.optimizer}:{self.version}"

    @classmethod
    def from_bytes(cls, data: bytes | bytearray) -> SessionState:
        meta, arrays = _safetensors.loads(data)
        if meta.get("format") != STATE_FORMAT or set(arrays) != {"hc"}:
            raise _safetensors.SafetensorsError(
                f"not a session state (format {meta.get('format')!r}, tensors {sorted(arrays)})")
        shapes = {name: tuple(shape) for name, shape in json.loads(meta["shapes"])}
        code = _safetensors.read(data).codes["hc"]
        dtype = STATE_DTYPE_OF.get(code)
        if dtype is None:
            raise _safetensors.SafetensorsError(f"a session state's hc must be F32, BF16 or F16, got {code}")
        return cls(meta["optimizer"], int(meta["version"]), meta["digest"], int(meta["step"]), shapes,
                   arrays["hc"].astype(np.float32), dtype)

    def to_bytes(self) -> bytes:
        n = sum(math.prod(s) for s in self.shapes.values())
        if self.hc.shape[:1] != (n,):
            raise ValueError(f"the state has {self.hc.shape[0]} rows for {n} coordinates")
        meta = {"format": STATE_FORMAT, "optimizer": self.optimizer, "version": str(self.version),
                "digest": self.digest, "step": str(self.step),
                "shapes": json.dumps([[name, list(shape)] for name, shape in self.shapes.items()])}
        hc = np.asarray(self.hc, dtype=np.float32)
        if self.state_dtype == "bfloat16":
            return _safetensors.dumps({"hc": hc}, meta, bfloat16=["hc"])
        if self.state_dtype == "float16":
            return _safetensors.dumps({"hc": hc.astype(np.float16)}, meta)
        return _safetensors.dumps({"hc": hc}, meta)


# --- jobs ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JobProgress:
    iteration: int = 0
    total_iterations: int = 0
    meta_loss: float | None = None
    eval_loss: float | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    phase: str | None = None
    resumed_from: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class JobResult:
    name: str
    version: int
    reference: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Job:
    id: str
    name: str
    state: str                 # queued, running, succeeded, failed or cancelled
    progress: JobProgress
    error: str | None = None
    result: JobResult | None = None
    cancel_requested: bool = False
    attempts: int = 0
    device: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    kind: str = "train"        # train, or evaluate (optimizers.evaluate)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Job:
        return _build(cls, data, progress=lambda p: _build(JobProgress, p),
                      result=lambda r: _build(JobResult, r), created_at=_time, started_at=_time,
                      finished_at=_time)


@dataclass(frozen=True)
class JobCurve:
    """A job's meta-training curves so far: an entry per iteration trained, the validation loss only
    where validation ran (None elsewhere)."""

    iterations: list[int]
    meta_loss: list[float | None]
    eval_loss: list[float | None]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobCurve:
        return cls(list(data["iterations"]), list(data["meta_loss"]), list(data["eval_loss"]))


@dataclass(frozen=True)
class JobEvent:
    event: str                 # "progress" while the job runs, "end" once with the finished job
    job: Job


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
