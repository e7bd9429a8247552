"""run_job: one meta-training job, from its row to a published optimizer version.

    claim the job's lease → meta-train, from the resume checkpoint when there is one, writing progress to
    the row every iteration and a resume checkpoint every `resume_every` → evaluate against the tuned
    baselines → register the version (with its evaluation and a link to the job) and mark the job
    succeeded, in one transaction

An evaluation job (kind `evaluate`, from POST /v1/optimizers/{name}/versions/{n}/evaluate) skips the
training: it evaluates the registered version the same way and attaches the report to it, again in the
transaction that marks it succeeded.

Any worker may call it for any job at any time; both executors do. The lease (see lease.py) lets one
runner hold a job at a time and every write is conditional on holding it, so a runner that lost its lease
(its heartbeat lapsed and someone took over) changes nothing, and a version is registered exactly once. A
finished job is never claimed again. Cancellation is a flag on the row, checked before every iteration
(and by the job process's supervisor, which kills a job that does not stop in time). Under procrastinate
the heartbeat is procrastinate's own (its worker's) and the task's lock lets it take the job over.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

import pydantic
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from service.errors import L2OError
from service.jobs import lease
from service.jobs import repository as repo
from service.jobs.spec import EvaluationJobSpec, JobSpec
from service.lopt import Checkpoint
from service.lopt.device import resolve_device
from service.metatrain import (
    EvaluationReport,
    MetaTrainingDiverged,
    MetaTrainingStopped,
    MetaTrainResult,
    Progress,
    ResumeCheckpoint,
    evaluate,
    meta_train,
    tune_all,
)
from service.registry import repository as registry_repo
from service.registry import service as registry
from service.registry.db import Database
from service.registry.models import utcnow
from service.tasks import TaskFamily

log = logging.getLogger(__name__)


EVALUATE = "evaluate"  # Job.kind of an evaluation on demand; every other job meta-trains


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # the worker is stopping: the job went back to the queue, checkpoint kept
    SKIPPED = "skipped"  # finished already, unknown, or held by a live runner elsewhere
    LOST = "lost"  # the lease was taken over mid-run: the new holder carries on


class LeaseLost(Exception):
    """A write found the lease held by someone else: this runner must stop without changing anything."""


@dataclass(frozen=True)
class RunnerConfig:
    device: str = "cpu"
    lease_s: float = 30.0
    max_attempts: int = 5
    # Our own lease (a heartbeat on the row, taken over once it lapses): what the embedded executor's
    # workers coordinate by. procrastinate workers go without: its lock and its worker heartbeats do that.
    leases: bool = True

    @classmethod
    def from_settings(cls, settings: Any) -> RunnerConfig:
        return cls(resolve_device(settings.job_device, "L2O_JOB_DEVICE"), settings.job_lease_s,
                   settings.job_max_attempts)


def run_job(job_id: str, db: Database, config: RunnerConfig = RunnerConfig(), *,
            should_interrupt: Callable[[], bool] | None = None, takeover: bool = False) -> Outcome:
    """Run job `job_id` to its end, or until `should_interrupt()` (the worker is stopping) says to hand it back.

    A job held by a live-looking lease is left to its holder. With `takeover` the caller knows no one else
    runs the job (procrastinate's lock says so): a running job is taken over whoever its last owner was.
    """
    owner = lease.acquire()
    try:
        if not _claim(db, job_id, owner, config, takeover):
            return Outcome.SKIPPED
        run = _Run(db, job_id, owner, config, should_interrupt)
        with run.heartbeat:
            try:
                return run.run()
            except LeaseLost:
                log.warning("job %s: lease lost to another worker; stopping without writing", job_id)
                return Outcome.LOST
            except DBAPIError:
                # The database went away: leave the row as it is; the lease lapses and the job resumes later.
                log.exception("job %s: database error; the job will be resumed when its lease lapses", job_id)
                raise
            except Exception as exc:
                log.exception("job %s failed", job_id)
                return run.end(Outcome.FAILED, error=failure_reason(exc))
    finally:
        lease.release(owner)


def failure_reason(exc: Exception) -> str:
    if isinstance(exc, L2OError):
        return exc.message
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, MemoryError) or "can't allocate memory" in text or "out of memory" in text.lower():
        # torch's allocator says so in a RuntimeError once the process's memory cap is reached.
        return ("out of memory: the job needed more memory than its process may use (L2O_JOB_MAX_MEMORY_BYTES); "
                f"lower training.instances, training.unroll or the family's size ({text.splitlines()[0][:300]})")
    return text


def _claim(db: Database, job_id: str, owner: str, config: RunnerConfig, takeover: bool) -> bool:
    with db.session() as s:
        job = repo.get_job(s, job_id)
        if job is None:
            log.warning("job %s does not exist", job_id)
            return False
        if job.state in repo.TERMINAL:
            return False
        void = job.lease_owner if job.state == repo.RUNNING and lease.is_void(job.lease_owner) else None
        stale_before = utcnow() - timedelta(seconds=config.lease_s) if config.leases else None
        claimed = repo.claim(s, job_id, owner, stale_before=stale_before, void_owner=void, takeover=takeover)
        s.commit()
    return claimed


class _Heartbeat(threading.Thread):
    """Renews the lease while the job runs, however long one iteration takes."""

    def __init__(self, db: Database, job_id: str, owner: str, interval: float) -> None:
        super().__init__(daemon=True, name=f"l2o-heartbeat-{job_id[:8]}")
        self.db, self.job_id, self.owner, self.interval = db, job_id, owner, interval
        self.lost = threading.Event()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                with self.db.session() as s:
                    held = repo.heartbeat(s, self.job_id, self.owner)
                    s.commit()
            except Exception:
                log.warning("job %s: heartbeat failed; retrying", self.job_id, exc_info=True)
                continue
            if not held:
                self.lost.set()
                return

    def __enter__(self) -> _Heartbeat:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self.join()


class _NoHeartbeat:
    """Where procrastinate's worker heartbeats stand in for ours."""

    def __init__(self) -> None:
        self.lost = threading.Event()

    def __enter__(self) -> _NoHeartbeat:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _Run:
    def __init__(self, db: Database, job_id: str, owner: str, config: RunnerConfig,
                 should_interrupt: Callable[[], bool] | None) -> None:
        self.db, self.job_id, self.owner, self.config = db, job_id, owner, config
        self.should_interrupt = should_interrupt or (lambda: False)
        self.heartbeat = (_Heartbeat(db, job_id, owner, max(config.lease_s / 3, 0.05)) if config.leases
                          else _NoHeartbeat())
        self.start_iteration = 0
        self.base_elapsed = 0.0
        self.key_id: int | None = None

    # --- the steps --------------------------------------------------------------------------------

    def run(self) -> Outcome:
        with self.db.session() as s:
            job = repo.get_job(s, self.job_id, with_resume=True)
        assert job is not None
        if job.attempts > self.config.max_attempts:
            return self.end(Outcome.FAILED, error=(
                f"gave up after {job.attempts - 1} starts that each ended without finishing (the worker was "
                f"killed or lost the database); L2O_JOB_MAX_ATTEMPTS is {self.config.max_attempts}"))
        if job.cancel_requested:
            return self.end(Outcome.CANCELLED)
        self.key_id = job.key_id
        if job.kind == EVALUATE:
            return self._run_evaluation(job.spec)
        try:
            spec = JobSpec.model_validate(job.spec)
        except pydantic.ValidationError as exc:
            return self.end(Outcome.FAILED, error=f"the job's stored spec is not valid for this version: {exc}")
        family = spec.family.build()
        settings = spec.training.settings(self.config.device)
        resume = self._resume_point(job.resume_checkpoint)
        if resume is not None:
            self.start_iteration, self.base_elapsed = resume.iteration, job.elapsed_s or 0.0
            log.info("job %s: resuming at iteration %d", self.job_id, resume.iteration)
        self.write(phase="training", device=self.config.device, total_iterations=settings.iterations,
                   iteration=self.start_iteration,
                   resumed_from=self.start_iteration if resume is not None or job.iteration > 0 else None,
                   curve_from=self.start_iteration)
        try:
            result = meta_train(family, spec.optimizer_config(), settings, progress=self._progress, resume=resume,
                                on_resume_checkpoint=self._save_resume, should_stop=self._should_stop)
        except MetaTrainingDiverged as exc:
            return self.end(Outcome.FAILED, error=f"meta-training diverged: {exc}")
        except MetaTrainingStopped:
            return self._stopped()
        # From here on only a cancel stops the job (checked when publishing): a worker that is shutting down
        # finishes the evaluation rather than throw the trained weights away.
        self.write(phase="evaluating")
        report = self._evaluate(spec, family, result.checkpoint)
        self.write(phase="publishing")
        return self._publish(spec, result, report)

    def _run_evaluation(self, stored: dict[str, Any]) -> Outcome:
        """An evaluation on demand: score the registered version and attach the report to it. It holds no
        resume checkpoint (a restart evaluates again from the start); a cancel is honoured when attaching."""
        try:
            spec = EvaluationJobSpec.model_validate(stored)
        except pydantic.ValidationError as exc:
            return self.end(Outcome.FAILED, error=f"the job's stored spec is not valid for this version: {exc}")
        self.write(phase="evaluating", device=self.config.device)
        with self.db.session() as s:
            version = registry_repo.get_version(s, spec.name, spec.version)
            data = registry.checkpoint_bytes(s, version) if version is not None else None
        if data is None:
            return self.end(Outcome.FAILED, error=f"{spec.name}:{spec.version} was deleted before it was evaluated")
        report = self._evaluate(spec, spec.family.build(), Checkpoint.from_bytes(data))
        self.write(phase="publishing")
        with self.db.session() as s:
            version = registry_repo.get_version(s, spec.name, spec.version)
            if version is None:
                s.rollback()
                return self.end(Outcome.FAILED, error=f"{spec.name}:{spec.version} was deleted while it was "
                                                      "being evaluated")
            registry.attach_evaluation(s, version, json_safe(report.to_dict()))
            if repo.finish(s, self.job_id, self.owner, repo.SUCCEEDED, unless_cancelled=True,
                           result_version_id=version.id):
                s.commit()
                log.info("job %s succeeded: evaluated %s", self.job_id, version.reference)
                return Outcome.SUCCEEDED
            s.rollback()
        return self._stopped()

    def _resume_point(self, data: bytes | None) -> ResumeCheckpoint | None:
        if not data:
            return None
        try:
            return ResumeCheckpoint.from_bytes(data)
        except Exception:
            log.warning("job %s: its resume checkpoint does not load; starting over", self.job_id, exc_info=True)
            return None

    def _evaluate(self, spec: JobSpec | EvaluationJobSpec, family: TaskFamily,
                  checkpoint: Checkpoint) -> EvaluationReport:
        ev, device = spec.evaluation, self.config.device
        tuned = tune_all(family, ev.baselines, steps=spec.eval_steps, n_instances=ev.tune_instances,
                         seed=spec.eval_seed, grid=ev.lr_grid, device=device)
        return evaluate(checkpoint, family, n_instances=ev.instances, steps=spec.eval_steps, seed=spec.eval_seed,
                        baselines=ev.baselines, tuned=tuned, device=device)

    def _publish(self, spec: JobSpec, result: MetaTrainResult, report: EvaluationReport) -> Outcome:
        """Register the version and end the job in one transaction: both happen, or neither."""
        with self.db.session() as s:
            version = registry.register_version(
                s, spec.name, result.checkpoint.to_bytes(), source="job", job_id=self.job_id,
                evaluation=json_safe(report.to_dict()), publisher=self._publisher(s),
                description=spec.description, tag_values=spec.tags)
            if repo.finish(s, self.job_id, self.owner, repo.SUCCEEDED, unless_cancelled=True,
                           result_version_id=version.id):
                s.commit()
                log.info("job %s succeeded: %s", self.job_id, version.reference)
                return Outcome.SUCCEEDED
            s.rollback()
        return self._stopped()

    def _publisher(self, s: Session) -> registry.Publisher:
        """The job's key as it is now: a key that lost the admin scope since submitting publishes without it."""
        key = registry_repo.get_key(s, self.key_id) if self.key_id is not None else None
        return registry.Publisher(self.key_id if key is not None else None,
                                  key is not None and key.revoked_at is None and "admin" in key.scopes)

    # --- callbacks from the training loop ---------------------------------------------------------

    def _progress(self, p: Progress) -> None:
        done = p.iteration - self.start_iteration
        values: dict[str, Any] = {
            "iteration": p.iteration, "meta_loss": finite_or_none(p.meta_loss),
            "elapsed_s": self.base_elapsed + p.seconds,
            "eta_s": p.seconds / done * (p.total - p.iteration) if done > 0 else None,
        }
        if p.eval_loss is not None:
            values["eval_loss"] = finite_or_none(p.eval_loss)
        self.write(point=(p.iteration, values["meta_loss"], finite_or_none(p.eval_loss)), **values)

    def _save_resume(self, checkpoint: ResumeCheckpoint) -> None:
        self.write(resume_checkpoint=checkpoint.to_bytes())

    def _should_stop(self) -> bool:
        if self.heartbeat.lost.is_set() or self.should_interrupt():
            return True
        with self.db.session() as s:
            ctl = repo.control(s, self.job_id)
        return ctl is None or ctl.cancel_requested or ctl.lease_owner != self.owner

    # --- endings ----------------------------------------------------------------------------------

    def _stopped(self) -> Outcome:
        """Training stopped early: say why, and end the job accordingly."""
        with self.db.session() as s:
            ctl = repo.control(s, self.job_id)
        if ctl is None or ctl.lease_owner != self.owner or self.heartbeat.lost.is_set():
            return Outcome.LOST
        if ctl.cancel_requested:
            return self.end(Outcome.CANCELLED)
        with self.db.session() as s:
            released = repo.release(s, self.job_id, self.owner)
            s.commit()
        log.info("job %s: handed back to the queue; it resumes from its last checkpoint", self.job_id)
        return Outcome.INTERRUPTED if released else Outcome.LOST

    def end(self, outcome: Outcome, **values: Any) -> Outcome:
        with self.db.session() as s:
            ended = repo.finish(s, self.job_id, self.owner, outcome.value, **values)
            s.commit()
        if not ended:
            return Outcome.LOST
        log.info("job %s %s%s", self.job_id, outcome.value, f": {values['error']}" if "error" in values else "")
        return outcome

    def write(self, point: tuple[int, float | None, float | None] | None = None, curve_from: int | None = None,
              **values: Any) -> None:
        """Write to the job's row while this worker holds the lease, in the same transaction adding a point to
        its curves, or dropping the points after `curve_from` (iterations a resumed job trains again)."""
        with self.db.session() as s:
            held = repo.update_running(s, self.job_id, self.owner, **values)
            if held and curve_from is not None:
                repo.drop_points_after(s, self.job_id, curve_from)
            if held and point is not None:
                repo.add_point(s, self.job_id, *point)
            s.commit()
        if not held:
            raise LeaseLost(self.job_id)


def finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def json_safe(value: Any) -> Any:
    """JSON has no infinity or NaN (a diverged baseline's loss): they are stored as null."""
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
