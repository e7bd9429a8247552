"""The job spec: what to meta-train, how, and how to evaluate it before it is published.

Every default comes from the core (`OptimizerConfig`, `MetaTrainSettings`, the quadratic family), whose
defaults are the paper's: 10-dimensional quadratics, two LSTM layers of 20 units with log/sign
preprocessing and a 0.1 output scale, horizon 100 in unrolls of 20, Adam at 1e-3, and an evaluation
against SGD, NAG, RMSprop and Adam each tuned over a grid of learning rates.

A spec is checked the way the run will use it (the family is built, the settings constructed), so a spec
that is accepted does not fail later for a reason that could have been seen at submission. Unknown fields
are refused, so a typo is a 422 naming it rather than a silently ignored setting.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from service.errors import InvalidName, ValidationError
from service.lopt import OptimizerConfig
from service.lopt.config import ARCHITECTURES, ConfigError
from service.metatrain import BASELINES, MetaTrainSettings
from service.metatrain.baselines import LR_GRID
from service.metatrain.settings import META_LOSSES, META_LR_SCHEDULES
from service.registry import tags
from service.registry.names import check_name
from service.tasks import FAMILIES, TaskFamily, make_family

_OPT = OptimizerConfig()
_TRAIN = MetaTrainSettings()

BaselineName = Literal[tuple(BASELINES)]  # type: ignore[valid-type]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FamilySpec(_Strict):
    """The task family meta-trained on; `params` are the family's own (see `l2o train --help`)."""

    name: str = Field(default="quadratic", description=f"one of: {', '.join(sorted(FAMILIES))}")
    params: dict[str, Any] = Field(default_factory=dict, validate_default=True,
                                   description="e.g. {\"dim\": 10} for quadratic; omitted ones take defaults")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in FAMILIES:
            raise ValueError(f"unknown task family {name!r}; known: {', '.join(sorted(FAMILIES))}")
        return name

    @field_validator("params")
    @classmethod
    def _buildable(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        name = info.data.get("name")
        if name is None:  # the name itself was refused; that error says enough
            return params
        # make_family raises ValueError naming the bad parameter; the stored spec keeps every default filled
        # in, so the job row says exactly what was trained on.
        return make_family(name, **params).params()

    def build(self) -> TaskFamily:
        return make_family(self.name, **self.params)


class OptimizerSpec(_Strict):
    """The learned optimizer's architecture and its input/output scaling. `hidden_size` and `output_scale`
    default by architecture: 20 and 0.1 for the LSTM, 32 and 0.003 (its base step) for the feature MLP."""

    architecture: Literal[ARCHITECTURES] = _OPT.architecture  # type: ignore[valid-type]
    hidden_size: int = Field(default=None, ge=1, le=1024, validate_default=False)  # type: ignore[assignment]
    num_layers: int = Field(default=_OPT.num_layers, ge=1, le=8)
    preprocess: Literal["log_sign", "none"] = _OPT.preprocess
    preprocess_p: float = Field(default=_OPT.preprocess_p, gt=0, lt=100)
    output_scale: float = Field(default=None, validate_default=False,  # type: ignore[assignment]
                                description="the LSTM's output times this, or the feature MLP's base step")
    warmup: bool | None = Field(default=None, description="feature_mlp only: its step-size factor grows over its "
                                                          "first steps (up to 1.4x at the first)")
    step_memory: bool | None = Field(default=None, description="feature_mlp only: it carries a learned log step "
                                                               "size per coordinate from step to step")
    relative_correction: bool | None = Field(default=None, description="feature_mlp only: its direction correction "
                                                                       "shrinks with the gradient's signal-to-noise "
                                                                       "ratio")
    correction_warmup: bool | None = Field(default=None, description="feature_mlp only: its direction correction "
                                                                     "grows over its first steps (0.1x at the first)")
    memory_up_only: bool | None = Field(default=None, description="feature_mlp with step_memory only: the memory "
                                                                  "can raise the step, not lower it")

    @field_validator("output_scale")
    @classmethod
    def _scale(cls, value: float) -> float:
        if not (0.0 < abs(value) < 1e6):
            raise ValueError(f"output_scale must be non-zero with magnitude under 1e6, got {value}")
        return value

    @model_validator(mode="after")
    def _architecture_defaults(self) -> OptimizerSpec:
        mlp = self.architecture == "feature_mlp"
        if self.hidden_size is None:
            self.hidden_size = 32 if mlp else _OPT.hidden_size
        if self.output_scale is None:
            self.output_scale = 0.003 if mlp else _OPT.output_scale
        try:   # which fields apply to which architecture, and which options need which: the config's own rules
            self.config(trained_on={})
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return self

    def config(self, trained_on: dict[str, Any]) -> OptimizerConfig:
        return OptimizerConfig(**self.model_dump(), trained_on=trained_on)


class TrainingSpec(_Strict):
    """Meta-training: one iteration trains on a fresh batch of `instances` optimizees for `horizon` steps,
    back-propagating every `unroll` steps. `resume_every` sets how often a resume checkpoint is saved."""

    iterations: int = Field(default=_TRAIN.iterations, ge=1, le=1_000_000)
    horizon: int = Field(default=_TRAIN.horizon, ge=1, le=100_000)
    unroll: int = Field(default=_TRAIN.unroll, ge=1, le=100_000)
    meta_lr: float = Field(default=_TRAIN.meta_lr, gt=0, lt=1)
    meta_lr_schedule: Literal[META_LR_SCHEDULES] = Field(  # type: ignore[valid-type]
        default=_TRAIN.meta_lr_schedule, description="constant, or cosine: decays meta_lr to 0 over the iterations")
    instances: int = Field(default=_TRAIN.instances, ge=1, le=65_536)
    seed: int = Field(default=_TRAIN.seed, ge=0, le=2**31 - 1)
    grad_clip: float = Field(default=_TRAIN.grad_clip, gt=0)
    eval_every: int = Field(default=_TRAIN.eval_every, ge=1)
    eval_instances: int = Field(default=_TRAIN.eval_instances, ge=1, le=65_536,
                                description="validation instances scored every eval_every iterations")
    resume_every: int = Field(default=_TRAIN.resume_every, ge=1)
    meta_loss: Literal[META_LOSSES] = Field(  # type: ignore[valid-type]
        default=_TRAIN.meta_loss,
        description="sum (the paper's), log: every problem's relative progress alike, or log_rise: log, and a "
                    "penalty on a loss above the run's initial one")
    max_horizon: int | None = Field(default=None, ge=1, le=100_000,
                                    description="when set, each iteration's horizon is drawn from horizon..max_horizon")
    eval_problems: int = Field(default=_TRAIN.eval_problems, ge=1, le=64, description="validation problems")
    eval_seed: int | None = Field(default=None, ge=0, le=2**31 - 1,
                                  description="seed of the validation draws; default: the training seed")
    problems_per_iteration: int = Field(default=1, ge=1, le=64,
                                        description="problems per iteration; each meta-step averages their gradients")

    @model_validator(mode="after")
    def _consistent(self) -> TrainingSpec:
        self.settings("cpu")  # raises ValueError naming the field, e.g. "horizon must be a multiple of unroll"
        return self

    def settings(self, device: str) -> MetaTrainSettings:
        return MetaTrainSettings(**self.model_dump(), device=device)


class EvaluationSpec(_Strict):
    """The evaluation stored with the published version: the learned optimizer against each baseline, every
    baseline's learning rate tuned over `lr_grid` on `tune_instances` training instances, all scored on
    `instances` held-out instances."""

    instances: int = Field(default=64, ge=1, le=65_536, description="held-out instances")
    steps: int | None = Field(default=None, ge=1, le=100_000, description="optimizee steps; default: the horizon")
    baselines: list[BaselineName] = Field(default_factory=lambda: list(BASELINES), min_length=1)
    tune_instances: int = Field(default=16, ge=1, le=65_536)
    lr_grid: list[float] = Field(default_factory=lambda: list(LR_GRID), min_length=1, max_length=64)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1, description="default: the training seed + 1")

    @field_validator("baselines")
    @classmethod
    def _distinct(cls, names: list[str]) -> list[str]:
        return list(dict.fromkeys(names))

    @field_validator("lr_grid")
    @classmethod
    def _positive(cls, grid: list[float]) -> list[float]:
        bad = [lr for lr in grid if not (math.isfinite(lr) and lr > 0)]
        if bad:
            raise ValueError(f"learning rates must be positive and finite, got {bad}")
        return sorted(set(grid))


class JobSpec(_Strict):
    """A meta-training job: train an optimizer, evaluate it, publish it as the next version of `name`."""

    name: str = Field(description="the registry name the trained optimizer is published under")
    description: str | None = Field(default=None, description="the published version's description")
    tags: dict[str, str] = Field(default_factory=dict, description="the published version's tags")
    family: FamilySpec = Field(default_factory=FamilySpec)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        try:
            return check_name(name)
        except InvalidName as exc:
            raise ValueError(exc.message) from None

    @field_validator("description")
    @classmethod
    def _valid_description(cls, text: str | None) -> str | None:
        try:
            return tags.check_description(text, "description")
        except ValidationError as exc:
            raise ValueError(exc.message) from None

    @field_validator("tags")
    @classmethod
    def _valid_tags(cls, values: dict[str, str]) -> dict[str, str]:
        try:
            return tags.check_tags(values, "tags")
        except ValidationError as exc:
            raise ValueError(exc.message) from None

    @property
    def eval_steps(self) -> int:
        return self.evaluation.steps or self.training.horizon

    @property
    def eval_seed(self) -> int:
        return self.evaluation.seed if self.evaluation.seed is not None else self.training.seed + 1

    def optimizer_config(self) -> OptimizerConfig:
        """The config the published checkpoint carries, with what it was trained on as provenance."""
        # Where it ran (the device) is not part of what was trained, so it is left out.
        settings = self.training.settings("cpu").to_dict()
        del settings["device"]
        return self.optimizer.config({"family": self.family.name, "params": self.family.params,
                                      "settings": settings})


class EvaluationRequest(_Strict):
    """An evaluation on demand of a registered version (POST /v1/optimizers/{name}/versions/{n}/evaluate):
    the family defaults to the one the checkpoint was trained on, with its parameters."""

    family: FamilySpec | None = Field(default=None, description="default: what the checkpoint was trained on")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)


DEFAULT_EVAL_STEPS = 100  # as `l2o eval`, when the checkpoint does not say its training horizon
DEFAULT_EVAL_SEED = 1


class EvaluationJobSpec(_Strict):
    """What an evaluation job stores in its row: the version it scores and everything it runs with, every
    default filled in, so the row says exactly what the attached report measured."""

    kind: Literal["evaluate"] = "evaluate"
    name: str
    version: int = Field(ge=1)
    family: FamilySpec
    evaluation: EvaluationSpec

    @classmethod
    def of(cls, name: str, version: int, trained_on: dict[str, Any] | None,
           request: EvaluationRequest) -> EvaluationJobSpec:
        trained_on = trained_on or {}
        family = request.family
        if family is None:
            if "family" not in trained_on:
                raise ValueError("the checkpoint does not say what it was trained on: give `family`")
            family = FamilySpec(name=trained_on["family"], params=trained_on.get("params") or {})
        ev = request.evaluation
        horizon = (trained_on.get("settings") or {}).get("horizon")
        ev = ev.model_copy(update={"steps": ev.steps or horizon or DEFAULT_EVAL_STEPS,
                                   "seed": ev.seed if ev.seed is not None else DEFAULT_EVAL_SEED})
        return cls(name=name, version=version, family=family, evaluation=ev)

    @property
    def eval_steps(self) -> int:
        return self.evaluation.steps or DEFAULT_EVAL_STEPS

    @property
    def eval_seed(self) -> int:
        return self.evaluation.seed if self.evaluation.seed is not None else DEFAULT_EVAL_SEED
