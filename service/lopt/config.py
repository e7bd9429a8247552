"""The optimizer's config: everything besides the weights that decides its updates."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Preprocess = Literal["log_sign", "none"]
PREPROCESS_KINDS: tuple[str, ...] = ("log_sign", "none")


class ConfigError(ValueError):
    """A config that cannot describe a working optimizer."""


@dataclass(frozen=True)
class OptimizerConfig:
    hidden_size: int = 20
    num_layers: int = 2
    preprocess: Preprocess = "log_sign"
    preprocess_p: float = 10.0
    output_scale: float = 0.1
    # Provenance: the task family it was meta-trained on and the command that made it.
    trained_on: dict[str, Any] = field(default_factory=dict)
    command: str | None = None

    def __post_init__(self) -> None:
        if not (1 <= int(self.hidden_size) <= 1024):
            raise ConfigError(f"hidden_size must be in 1..1024, got {self.hidden_size}")
        if not (1 <= int(self.num_layers) <= 8):
            raise ConfigError(f"num_layers must be in 1..8, got {self.num_layers}")
        if self.preprocess not in PREPROCESS_KINDS:
            raise ConfigError(f"preprocess must be one of {PREPROCESS_KINDS}, got {self.preprocess!r}")
        if not (0.0 < float(self.preprocess_p) < 100.0):
            raise ConfigError(f"preprocess_p must be in (0, 100), got {self.preprocess_p}")
        if not (0.0 < abs(float(self.output_scale)) < 1e6):
            raise ConfigError(f"output_scale must be non-zero and finite, got {self.output_scale}")

    @property
    def input_size(self) -> int:
        return 2 if self.preprocess == "log_sign" else 1

    @property
    def state_floats_per_coord(self) -> int:
        return self.num_layers * 2 * self.hidden_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OptimizerConfig:
        if not isinstance(data, dict):
            raise ConfigError("config must be a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config fields: {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(str(exc)) from exc
