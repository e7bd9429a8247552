"""Response bodies of the jobs API (the request body is the job spec, service.jobs.spec.JobSpec)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from service.registry.models import Job, JobPoint

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobProgress(BaseModel):
    iteration: int = Field(description="meta-training iterations done")
    total_iterations: int
    meta_loss: float | None = Field(description="the latest iteration's meta-loss")
    eval_loss: float | None = Field(description="the latest validation loss (every eval_every iterations)")
    elapsed_s: float | None = Field(description="seconds spent meta-training, over every start")
    eta_s: float | None = Field(description="estimated seconds of meta-training left")
    phase: str | None = Field(description="starting, training, evaluating or publishing while running")
    resumed_from: int | None = Field(description="the iteration the latest start resumed at, if it resumed")


class JobResult(BaseModel):
    name: str
    version: int
    reference: str = Field(description="`name:version`, usable wherever a reference is accepted")


class JobOut(BaseModel):
    id: str
    kind: Literal["train", "evaluate"] = Field(
        description="train: meta-train and publish a version; evaluate: evaluate a registered version and "
                    "attach the report to it")
    name: str = Field(description="the registry name the result is published under (or evaluated)")
    state: JobState
    progress: JobProgress
    error: str | None = Field(description="why the job failed")
    result: JobResult | None = Field(description="the registry version the job produced (or evaluated)")
    cancel_requested: bool
    attempts: int = Field(description="how many times a worker started the job")
    device: str | None = Field(description="where it trains: cpu or cuda")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    spec: dict[str, Any]

    @classmethod
    def of(cls, job: Job, reference: str | None = None) -> JobOut:
        result = None
        if reference is not None:
            name, _, number = reference.rpartition(":")
            result = JobResult(name=name, version=int(number), reference=reference)
        return cls(
            id=job.id, kind=job.kind, name=job.spec.get("name", ""), state=job.state,
            progress=JobProgress(iteration=job.iteration, total_iterations=job.total_iterations,
                                 meta_loss=job.meta_loss, eval_loss=job.eval_loss, elapsed_s=job.elapsed_s,
                                 eta_s=job.eta_s, phase=job.phase, resumed_from=job.resumed_from),
            error=job.error, result=result, cancel_requested=job.cancel_requested, attempts=job.attempts,
            device=job.device, created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
            spec=job.spec)


class JobCurve(BaseModel):
    """A job's meta-training curves so far, one entry per iteration trained (after a resume, the
    iterations as they were trained again)."""

    iterations: list[int]
    meta_loss: list[float | None] = Field(description="each iteration's meta-loss (null if it was not finite)")
    eval_loss: list[float | None] = Field(description="the validation loss where validation ran "
                                                      "(every eval_every iterations and the last), else null")

    @classmethod
    def of(cls, points: list[JobPoint]) -> JobCurve:
        return cls(iterations=[p.iteration for p in points], meta_loss=[p.meta_loss for p in points],
                   eval_loss=[p.eval_loss for p in points])
