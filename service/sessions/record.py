"""What a store holds for one session: its description, its LSTM state, and its last answer."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

# The dtypes a session's LSTM state may be kept in, by name: the step computes in float32 either way.
STATE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# What a parameter costs the server besides its name's bytes and 8 per shape entry: the name's str object,
# the shape's tuple and the mapping's slot (CPython: about 50 + 40 + 30 bytes), rounded up.
PARAMETER_OVERHEAD_BYTES = 128


def description_bytes(shapes: dict[str, tuple[int, ...]]) -> int:
    """What a session's parameter names and shapes cost to hold, by the same count the limits use."""
    return sum(len(name.encode()) + 8 * len(shape) + PARAMETER_OVERHEAD_BYTES for name, shape in shapes.items())


@dataclass(frozen=True)
class SessionInfo:
    """Everything about a session but its tensors: cheap to list, small to send."""

    id: str
    owner: str                            # the id of the API key that made it
    optimizer: str                        # registered name
    version: int                          # version number within the name
    version_id: str                       # the registry's id of that immutable version
    digest: str                           # sha256 of the version's checkpoint bytes
    shapes: dict[str, tuple[int, ...]]    # the client's parameters, in the order they were given
    state_shape: tuple[int, ...]          # LSTMState.hc: config.state_shape(n_coords)
    step: int                             # steps applied so far
    created_at: float
    last_used_at: float
    state_dtype: str = "float32"          # of the LSTM state: float32, or bfloat16 / float16 (half the bytes)

    @property
    def n_coords(self) -> int:
        return self.state_shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes of LSTM state."""
        return math.prod(self.state_shape) * STATE_DTYPES[self.state_dtype].itemsize

    @property
    def held_bytes(self) -> int:
        """What the session costs the server: its state and its description (names, shapes), the bytes the
        limits count. A session of many long names and empty shapes holds little state but much else."""
        return self.nbytes + description_bytes(self.shapes)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["shapes"] = [[name, list(shape)] for name, shape in self.shapes.items()]
        doc["state_shape"] = list(self.state_shape)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SessionInfo:
        doc = dict(doc)
        doc["shapes"] = {name: tuple(shape) for name, shape in doc["shapes"]}
        doc["state_shape"] = tuple(doc["state_shape"])
        return cls(**doc)


@dataclass(frozen=True)
class SessionRecord:
    """A session as stored. Never mutated: a step makes a new record with a new state tensor."""

    info: SessionInfo
    hc: torch.Tensor                      # info.state_dtype, info.state_shape
    answer: bytes | bytearray | None = None           # the bytes sent for step info.step - 1, replayed on a retry
    answer_type: str | None = None        # their Content-Type

    @property
    def id(self) -> str:
        return self.info.id


def state_from_bytes(data: bytes | bytearray, shape: tuple[int, ...], dtype: str = "float32") -> torch.Tensor:
    """A state tensor from its raw little-endian bytes (copied into memory torch owns)."""
    torch_dtype = STATE_DTYPES[dtype]
    if len(data) != math.prod(shape) * torch_dtype.itemsize:
        raise ValueError(f"stored state has {len(data)} bytes, shape {shape} of {dtype} needs "
                         f"{math.prod(shape) * torch_dtype.itemsize}")
    if not data:
        return torch.zeros(shape, dtype=torch_dtype)
    return torch.frombuffer(bytearray(data), dtype=torch_dtype).view(shape)


def state_to_bytes(hc: torch.Tensor) -> bytes:
    """The state's raw bytes, in its own dtype."""
    return hc.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes()
