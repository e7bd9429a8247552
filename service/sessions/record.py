"""What a store holds for one session: its description, its LSTM state, and its last answer."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch


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
    state_shape: tuple[int, ...]          # LSTMState.hc: (n_coords, num_layers, 2, hidden)
    step: int                             # steps applied so far
    created_at: float
    last_used_at: float

    @property
    def n_coords(self) -> int:
        return self.state_shape[0]

    @property
    def nbytes(self) -> int:
        return math.prod(self.state_shape) * 4

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
    hc: torch.Tensor                      # float32, info.state_shape
    answer: bytes | None = None           # the bytes sent for step info.step - 1, replayed on a retry
    answer_type: str | None = None        # their Content-Type

    @property
    def id(self) -> str:
        return self.info.id


def state_from_bytes(data: bytes | bytearray, shape: tuple[int, ...]) -> torch.Tensor:
    """A float32 state tensor from its raw little-endian bytes (copied into memory torch owns)."""
    if len(data) != math.prod(shape) * 4:
        raise ValueError(f"stored state has {len(data)} bytes, shape {shape} needs {math.prod(shape) * 4}")
    if not data:
        return torch.zeros(shape, dtype=torch.float32)
    return torch.frombuffer(bytearray(data), dtype=torch.float32).view(shape)


def state_to_bytes(hc: torch.Tensor) -> bytes:
    return hc.detach().to(torch.float32).contiguous().cpu().view(torch.uint8).numpy().tobytes()
