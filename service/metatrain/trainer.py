"""The outer loop: Adam on the LSTM's weights over batches of sampled optimizees."""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from service.lopt import Checkpoint, CoordinatewiseLSTM, OptimizerConfig, init
from service.metatrain.resume import ResumeCheckpoint
from service.metatrain.rollout import lstm_curve
from service.metatrain.settings import MetaTrainSettings
from service.metatrain.unroll import Trajectory, run_unroll
from service.tasks.base import TaskFamily


class MetaTrainingDiverged(RuntimeError):
    """The meta-loss became NaN or infinite: the spec's settings do not train."""


class MetaTrainingStopped(Exception):
    """`should_stop` asked the loop to end (cancellation)."""


@dataclass(frozen=True)
class Progress:
    iteration: int
    total: int
    meta_loss: float
    eval_loss: float | None
    seconds: float


@dataclass
class MetaTrainResult:
    checkpoint: Checkpoint  # the best weights by validation loss
    best_eval: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    optimizee_steps: int = 0

    @property
    def optimizee_steps_per_s(self) -> float:
        return self.optimizee_steps / self.seconds if self.seconds > 0 else 0.0


def _validation_loss(config: OptimizerConfig, weights: dict[str, torch.Tensor], family: TaskFamily,
                     settings: MetaTrainSettings) -> float:
    """The mean final loss on validation instances; with several problems or the log meta-loss, the mean
    over problems of log(final loss / initial loss), so that every problem counts alike."""
    if settings.eval_problems == 1 and settings.meta_loss == "sum":
        batch = family.sample(settings.eval_instances, settings.validation_seed, "validation", device=settings.device)
        curve = lstm_curve(config, weights, batch, settings.horizon, final_only=True)
        value = float(curve[-1].mean())
        return value if math.isfinite(value) else math.inf
    total = 0.0
    for k in range(settings.eval_problems):
        batch = family.sample(settings.eval_instances, settings.validation_seed * 1_009 + k,
                              "validation", device=settings.device)
        with torch.no_grad():
            start = batch.eval_loss(batch.init_params()).clamp_min(1e-30)
        final = lstm_curve(config, weights, batch, settings.eval_horizon, final_only=True)[-1]
        ratio = float((final.clamp_min(1e-30) / start).log().mean())
        if not math.isfinite(ratio):
            return math.inf
        total += ratio
    return total / settings.eval_problems


def meta_train(family: TaskFamily, config: OptimizerConfig, settings: MetaTrainSettings, *,
               progress: Callable[[Progress], None] | None = None,
               resume: ResumeCheckpoint | None = None,
               on_resume_checkpoint: Callable[[ResumeCheckpoint], None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> MetaTrainResult:
    """Meta-train with truncated BPTT; reproducible for a given seed, resumable from a ResumeCheckpoint."""
    device = torch.device(settings.device)
    if config.architecture == "feature_mlp" and config.time_horizon is None:
        # Past its longest training run the rule keeps the time features it last saw (lopt/feature_mlp.py).
        config = dataclasses.replace(config, time_horizon=settings.eval_horizon)
    torch.manual_seed(settings.seed)
    net = CoordinatewiseLSTM(config, generator=torch.Generator().manual_seed(settings.seed)).to(device)
    meta_opt = torch.optim.Adam(net.parameters(), lr=settings.meta_lr)
    start, best_eval, history = 0, math.inf, []
    best_weights = {k: v.detach().clone() for k, v in net.weights().items()}
    if resume is not None:
        net.load_weights({k: v.to(device) for k, v in resume.weights.items()})
        meta_opt.load_state_dict(resume.meta_optimizer)
        torch.set_rng_state(resume.rng_state)
        start, best_eval, history = resume.iteration, resume.best_eval, list(resume.history)
        best_weights = {k: v.to(device).clone() for k, v in resume.best_weights.items()}

    def save(done: int) -> None:
        on_resume_checkpoint(ResumeCheckpoint(
            done, {k: v.detach().cpu().clone() for k, v in net.weights().items()},
            copy.deepcopy(meta_opt.state_dict()), torch.get_rng_state(),
            {k: v.cpu() for k, v in best_weights.items()}, best_eval, list(history)))

    began = time.perf_counter()
    steps_done, saved = 0, start
    for it in range(start, settings.iterations):
        if should_stop is not None and should_stop():
            if on_resume_checkpoint is not None and saved < it:
                save(it)  # a stop loses no finished iteration
            raise MetaTrainingStopped(f"stopped before iteration {it + 1}")
        # Each iteration draws fresh instances from a seed of its own, so a resumed run sees the same ones.
        batches = [family.sample(settings.instances, settings.problem_seed(it, k), "train", device=device)
                   for k in range(settings.problems_per_iteration)]
        for group in meta_opt.param_groups:
            group["lr"] = settings.meta_lr_at(it)
        trajs = {}
        for k, batch in enumerate(batches):
            theta = batch.init_params()
            trajs[k] = Trajectory(theta, init(config, theta.numel(), device=device), 0)
        total, unrolls = 0.0, 0
        for _ in range(settings.horizon_at(it) // settings.unroll):
            meta_opt.zero_grad(set_to_none=True)
            losses = []
            for k in list(trajs):
                meta_loss, traj = run_unroll(config, net.weights(), batches[k], trajs[k], settings.unroll,
                                             settings.meta_loss)
                if not torch.isfinite(meta_loss) and settings.meta_loss == "sum":
                    raise MetaTrainingDiverged(
                        f"meta-loss became {float(meta_loss.detach())} at iteration {it + 1}, optimizee step "
                        f"{traj.step}; try a lower meta_lr or output scale")
                if not torch.isfinite(meta_loss):
                    # This problem diverged under the current weights: drop the rest of its trajectory.
                    steps_done += traj.step * settings.instances
                    del trajs[k]
                    continue
                # Backward per problem keeps one problem's graph in memory at a time; the gradients add up.
                (meta_loss / len(batches)).backward()
                trajs[k] = traj.detach()
                losses.append(float(meta_loss.detach()) / (settings.unroll if settings.meta_loss == "sum" else 1))
            if not losses:
                break
            torch.nn.utils.clip_grad_norm_(net.parameters(), settings.grad_clip)
            meta_opt.step()
            total += sum(losses) / len(losses)
            unrolls += 1
        steps_done += sum(traj.step for traj in trajs.values()) * settings.instances
        eval_loss = None
        if (it + 1) % settings.eval_every == 0 or it + 1 == settings.iterations:
            eval_loss = _validation_loss(config, net.weights(), family, settings)
            if eval_loss < best_eval or not math.isfinite(best_eval):
                best_eval = eval_loss
                best_weights = {k: v.detach().clone() for k, v in net.weights().items()}
        record = {"iteration": it + 1, "meta_loss": total / max(1, unrolls)}
        if eval_loss is not None:
            record["eval_loss"] = eval_loss
        history.append(record)
        if progress is not None:
            progress(Progress(it + 1, settings.iterations, record["meta_loss"], eval_loss,
                              time.perf_counter() - began))
        # The last iteration too: a job stopped while evaluating resumes there, without training again.
        if on_resume_checkpoint is not None and ((it + 1) % settings.resume_every == 0
                                                 or it + 1 == settings.iterations):
            save(it + 1)
            saved = it + 1
    seconds = time.perf_counter() - began
    checkpoint = Checkpoint(config, {k: v.detach().cpu() for k, v in best_weights.items()})
    return MetaTrainResult(checkpoint, best_eval, history, seconds, steps_done)
