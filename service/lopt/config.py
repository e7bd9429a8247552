"""The optimizer's config: everything besides the weights that decides its updates."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Preprocess = Literal["log_sign", "none"]
PREPROCESS_KINDS: tuple[str, ...] = ("log_sign", "none")
# "lstm": the paper's coordinatewise LSTM. "feature_mlp": a per-coordinate MLP over Adam-normalised features
# (lopt/feature_mlp.py), built to carry over to problems it was not trained on.
ARCHITECTURES: tuple[str, ...] = ("lstm", "feature_mlp")
# Fields that only the LSTM reads: a feature_mlp config must leave them at their defaults, and does not show them.
LSTM_ONLY_FIELDS: tuple[str, ...] = ("preprocess", "preprocess_p")
# Fields that only the feature MLP reads; an LSTM config leaves them unset (None) and does not show them.
FEATURE_MLP_ONLY_FIELDS: tuple[str, ...] = ("time_horizon", "warmup", "step_memory", "relative_correction",
                                             "correction_warmup", "memory_up_only")
# The feature MLP's on/off options (true, false or absent), as job specs and `l2o train` flags take them too.
FEATURE_MLP_SWITCHES: tuple[str, ...] = ("warmup", "step_memory", "relative_correction", "correction_warmup",
                                          "memory_up_only")


class ConfigError(ValueError):
    """A config that cannot describe a working optimizer."""


@dataclass(frozen=True)
class OptimizerConfig:
    """hidden_size and num_layers are the LSTM's units and layers, or the feature MLP's hidden width and
    hidden layers; output_scale multiplies the LSTM's output, or is the feature MLP's base step size."""

    architecture: str = "lstm"
    hidden_size: int = 20
    num_layers: int = 2
    preprocess: Preprocess = "log_sign"
    preprocess_p: float = 10.0
    output_scale: float = 0.1
    # The feature MLP's time features stop at this step (the longest horizon it was meta-trained on).
    time_horizon: int | None = None
    # The feature MLP's step-size factor grows over its first steps (lopt/feature_mlp.py); None: off.
    warmup: bool | None = None
    # The feature MLP carries a learned log step size per coordinate (lopt/feature_mlp.py); None: off.
    step_memory: bool | None = None
    # The feature MLP's direction correction shrinks with the gradient's signal (lopt/feature_mlp.py); None: off.
    relative_correction: bool | None = None
    # The feature MLP's direction correction grows over its first steps (lopt/feature_mlp.py); None: off.
    correction_warmup: bool | None = None
    # The feature MLP's step memory can only raise the step, s in [0, 3] (lopt/feature_mlp.py); None: off.
    memory_up_only: bool | None = None
    # Provenance: the task family it was meta-trained on and the command that made it.
    trained_on: dict[str, Any] = field(default_factory=dict)
    command: str | None = None

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.architecture != "lstm":
            for name in LSTM_ONLY_FIELDS:
                if getattr(self, name) != self.__dataclass_fields__[name].default:
                    raise ConfigError(f"{name} applies to the lstm architecture only, not to {self.architecture}")
        if self.architecture != "feature_mlp":
            for name in FEATURE_MLP_ONLY_FIELDS:
                if getattr(self, name) is not None:
                    raise ConfigError(f"{name} applies to the feature_mlp architecture only, "
                                      f"not to {self.architecture}")
        if self.time_horizon is not None and (isinstance(self.time_horizon, bool)
                                              or not isinstance(self.time_horizon, int)
                                              or not 1 <= self.time_horizon <= 1_000_000):
            raise ConfigError(f"time_horizon must be an integer in 1..1000000, got {self.time_horizon!r}")
        for name in FEATURE_MLP_SWITCHES:
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true, false or absent, got {getattr(self, name)!r}")
        if self.memory_up_only and not self.step_memory:
            raise ConfigError("memory_up_only applies to a feature_mlp with step_memory")
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
        if self.architecture == "feature_mlp":
            from service.lopt.feature_mlp import sizes

            return sizes(bool(self.step_memory))[1]
        return 2 if self.preprocess == "log_sign" else 1

    @property
    def state_shape_per_coord(self) -> tuple[int, ...]:
        """The shape of one coordinate's state: (layers, (h, c), hidden) for the LSTM; (moments,) for the
        feature MLP."""
        if self.architecture == "feature_mlp":
            from service.lopt.feature_mlp import sizes

            return (sizes(bool(self.step_memory))[0],)
        return (self.num_layers, 2, self.hidden_size)

    @property
    def state_floats_per_coord(self) -> int:
        return math.prod(self.state_shape_per_coord)

    def state_shape(self, n_coords: int) -> tuple[int, ...]:
        return (n_coords, *self.state_shape_per_coord)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.architecture != "lstm":
            for name in LSTM_ONLY_FIELDS:
                d.pop(name)
        for name in FEATURE_MLP_ONLY_FIELDS:
            if d[name] is None:
                d.pop(name)
        return d

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
