"""A job's price: the memory and compute its spec asks for, estimated before anything is allocated, and
refused with a 422 naming the part of the spec and the limit when over the configured limits.

Memory is the larger of the two phases, plus what a job process holds before it allocates anything:

    training    coords × (unroll × KEPT(S) + RESIDENT(S)) + instances × (data + (unroll + 1) × activations)
    evaluation  coords × (S + 8) + instances × (data + activations), one optimizer after the other

where coords is instances × params (at most the family's `max_batch_params`); S is the larger of the
optimizer's state floats per coordinate (`config.state_floats_per_coord`, so another architecture plugs
in) and its hidden units (2 × layers × hidden size: a feature MLP's activations); params, data and
activations come from the family's `footprint()`: a new family plugs in by giving one. KEPT and RESIDENT
were measured with one meta-training iteration per case in a fresh process (peak RSS): 346-433 floats
per coordinate per unrolled step, and 355-1,052 resident, at S = 80 (quadratics of 400 dimensions, 50
instances, unrolls of 10 and 20; an MLP of 64 units, 16 instances); the constants below sit above every
case.

Compute is the sum over training (the optimizee's loss-and-gradient and the optimizer's forward and
backward at every step, plus validation) and evaluation (tuning every baseline over the grid, then the
evaluation proper). Both are estimates: the memory cap of the job's process (process.py) is what holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from service.errors import ValidationError
from service.jobs.spec import EvaluationJobSpec, EvaluationSpec, JobSpec
from service.lopt import OptimizerConfig
from service.lopt.network import weight_shapes
from service.tasks import Footprint, TaskFamily

FLOAT_BYTES = 4
PROCESS_BYTES = 1024**3  # a job process's address space before it allocates: 0.7 GB measured (torch imported)

GIB = 1024**3


def kept_per_step(state_floats: int) -> int:
    """Floats the backward pass keeps per coordinate per unrolled step (measured 346-433 at S = 80)."""
    return 5 * state_floats + 16


def resident(state_floats: int) -> int:
    """Floats per coordinate held besides: state, the optimizee's θ and gradient, slack (measured up to 1,052)."""
    return 25 * state_floats


@dataclass(frozen=True)
class JobLimits:
    max_memory_bytes: int  # the job process's cap; 0: no check
    max_flops: float  # 0: no check

    @classmethod
    def from_settings(cls, settings) -> JobLimits:
        return cls(settings.job_max_memory_bytes, settings.job_max_flops)


@dataclass(frozen=True)
class Price:
    training_bytes: int
    evaluation_bytes: int
    training_flops: float
    evaluation_flops: float

    @property
    def memory_bytes(self) -> int:
        return PROCESS_BYTES + max(self.training_bytes, self.evaluation_bytes)

    @property
    def flops(self) -> float:
        return self.training_flops + self.evaluation_flops


def footprint(family: TaskFamily) -> Footprint:
    """The family's own estimate; a family without one is measured on one instance (its size only)."""
    if hasattr(family, "footprint"):
        return family.footprint()
    dim = family.sample(1, 0).dim
    return Footprint(params=dim, data=0, activations=dim, flops=6 * dim, eval_flops=2 * dim)


def optimizer_flops_per_coord(config: OptimizerConfig) -> int:
    """One forward pass of the coordinatewise network for one coordinate: two per weight it applies."""
    return 2 * sum(math.prod(shape) for shape in weight_shapes(config).values())


def estimate(spec: JobSpec) -> Price:
    f = footprint(spec.family.build())
    config = spec.optimizer_config()
    t, ev = spec.training, spec.evaluation
    s = max(config.state_floats_per_coord, 2 * config.num_layers * config.hidden_size)
    lopt = optimizer_flops_per_coord(config)

    def coords(instances: int) -> int:
        return min(instances * f.params, f.max_batch_params or math.inf)

    if config.architecture == "feature_mlp":
        # Measured: the mixture recipe's largest batch (42k coordinates, unrolls of 25, hidden 2 x 32) peaked
        # at 169 floats per coordinate per unrolled step, resident included; this sits above it.
        kept = t.unroll * (3 * config.num_layers * config.hidden_size + 14) + 4 * config.state_floats_per_coord
    else:
        kept = t.unroll * kept_per_step(s) + resident(s)
    per_instance = f.data + (t.unroll + 1) * f.activations
    validation = coords(t.eval_instances) * (s + 8) + t.eval_instances * (f.data + f.activations)
    # One problem's graph is held at a time; the others' parameters and state wait between their unrolls.
    waiting = (t.problems_per_iteration - 1) * coords(t.instances) * (config.state_floats_per_coord + 1)
    training_bytes = FLOAT_BYTES * (coords(t.instances) * kept + t.instances * per_instance + validation + waiting)
    evaluation_bytes, evaluation_flops = _evaluation(f, config, ev, spec.eval_steps, t.eval_instances)

    # Each step: the optimizee's loss and gradient, the optimizer's forward and backward over every coordinate.
    validations = math.ceil(t.iterations / t.eval_every)
    horizon = t.max_horizon or t.horizon  # the longest an iteration can draw
    training_flops = (t.iterations * t.problems_per_iteration * horizon
                      * (t.instances * f.flops + 3 * coords(t.instances) * lopt)
                      + validations * horizon * t.eval_problems
                      * (t.eval_instances * f.flops + coords(t.eval_instances) * lopt))
    return Price(training_bytes, evaluation_bytes, float(training_flops), evaluation_flops)


def _evaluation(f: Footprint, config: OptimizerConfig, ev: EvaluationSpec, steps: int,
                validation_instances: int = 0) -> tuple[int, float]:
    """Bytes and flops of tuning every baseline and then evaluating (a training job's last phase, or all of
    an evaluation job)."""
    s = max(config.state_floats_per_coord, 2 * config.num_layers * config.hidden_size)
    lopt = optimizer_flops_per_coord(config)

    def coords(instances: int) -> int:
        return min(instances * f.params, f.max_batch_params or math.inf)

    widest = max(ev.instances, ev.tune_instances, validation_instances)
    memory = FLOAT_BYTES * (coords(widest) * (s + 8) + widest * (f.data + f.activations))
    baselines = len(ev.baselines)
    tuning = baselines * len(ev.lr_grid) * steps * (ev.tune_instances * f.flops + 10 * coords(ev.tune_instances))
    evaluating = steps * (ev.instances * (baselines + 1) * (f.flops + f.eval_flops) + coords(ev.instances) * lopt)
    return memory, float(tuning + evaluating)


def estimate_evaluation(spec: EvaluationJobSpec, config: OptimizerConfig) -> Price:
    """An evaluation job's price: the evaluation phase alone, of the version's own config."""
    memory, flops = _evaluation(footprint(spec.family.build()), config, spec.evaluation, spec.eval_steps)
    return Price(0, memory, 0.0, flops)


TRAINING_KNOBS = "training.instances, training.unroll, family.params, optimizer.hidden_size and optimizer.num_layers"
EVALUATION_KNOBS = "evaluation.instances, evaluation.tune_instances and family.params"
TRAINING_WORK = "training.iterations, training.horizon, training.instances and family.params"
EVALUATION_WORK = "evaluation.steps, evaluation.instances, evaluation.lr_grid, evaluation.baselines and family.params"


def check(spec: JobSpec, limits: JobLimits) -> Price:
    """The spec's price, or a 422 naming the part of the spec over a limit, the estimate and the limit."""
    return check_price(estimate(spec), limits)


def check_price(price: Price, limits: JobLimits) -> Price:
    if limits.max_memory_bytes and price.memory_bytes > limits.max_memory_bytes:
        field, knobs = (("training", TRAINING_KNOBS) if price.training_bytes >= price.evaluation_bytes
                        else ("evaluation", EVALUATION_KNOBS))
        raise ValidationError(
            f"invalid request: body.{field}: the job is estimated to need {price.memory_bytes / GIB:.1f} GiB of "
            f"memory, over the limit of {limits.max_memory_bytes / GIB:.1f} GiB per job "
            f"(L2O_JOB_MAX_MEMORY_BYTES); it grows with {knobs}",
            detail={"field": field, "estimate_bytes": price.memory_bytes, "limit_bytes": limits.max_memory_bytes,
                    "setting": "L2O_JOB_MAX_MEMORY_BYTES"})
    if limits.max_flops and price.flops > limits.max_flops:
        field, knobs = (("training", TRAINING_WORK) if price.training_flops >= price.evaluation_flops
                        else ("evaluation", EVALUATION_WORK))
        raise ValidationError(
            f"invalid request: body.{field}: the job is estimated to need {price.flops:.2g} floating-point "
            f"operations, over the limit of {limits.max_flops:.2g} per job (L2O_JOB_MAX_FLOPS); it grows with "
            f"{knobs}",
            detail={"field": field, "estimate_flops": price.flops, "limit_flops": limits.max_flops,
                    "setting": "L2O_JOB_MAX_FLOPS"})
    return price
