"""`client.jobs`: meta-training jobs. A job trains an optimizer, evaluates it against tuned baselines and
publishes it as the next version of a registry name.

    job = l2o.jobs.submit({"name": "quad-small", "family": {"name": "quadratic", "params": {"dim": 10}}})
    l2o.jobs.list(state="running"), l2o.jobs.get(job.id), l2o.jobs.cancel(job.id)
    for event in l2o.jobs.events(job.id): ...          # server-sent events until the job ends
    job = l2o.jobs.wait(job.id, progress=True)         # a progress bar; the finished job
    job.result.reference                               # "quad-small:1", ready for sessions.create
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import httpx
from httpx_sse import EventSource, ServerSentEvent, SSEError

from client import _constants as c
from client._base import RequestOptions
from client._exceptions import APIResponseError, APITimeoutError
from client._progress import ProgressBar
from client.resources._resource import AsyncResource, SyncResource, segment
from client.types import Job, JobCurve, JobEvent

BASE = "/v1/jobs"


def _submit(spec: Mapping[str, Any] | None, fields: dict[str, Any]) -> RequestOptions:
    body = {**(spec or {}), **fields}
    if "name" not in body:
        raise ValueError("a job needs the registry name to publish under: submit({'name': ...}) or submit(name=...)")
    return RequestOptions("POST", BASE, json=body)


def _list(state: str | None, limit: int) -> RequestOptions:
    return RequestOptions("GET", BASE, params={"limit": limit, **({"state": state} if state else {})})


def _curve(job_id: str) -> RequestOptions:
    return RequestOptions("GET", f"{BASE}/{segment(job_id)}/curve")


def _events(job_id: str, timeout: float | None) -> RequestOptions:
    return RequestOptions("GET", f"{BASE}/{segment(job_id)}/events", stream=True, timeout=c.stream_timeout(timeout),
                          headers={"Accept": "text/event-stream"})


# Events with no data are skipped, as the SSE spec says: httpx-sse 0.4 makes one of each keep-alive comment
# that follows an event with an id.
def _event(sse: ServerSentEvent) -> JobEvent:
    try:
        return JobEvent(sse.event, Job.from_json(sse.json()))
    except (KeyError, TypeError, ValueError) as exc:
        raise APIResponseError(f"unreadable job event {sse.event!r}: {exc}") from exc


class _Waiter:
    """What wait() does with each event: draw the bar, note a resume, stop at the end or the deadline."""

    def __init__(self, job_id: str, progress: bool, timeout: float | None) -> None:
        self.job_id = job_id
        self.bar = ProgressBar() if progress else None
        self.deadline = time.monotonic() + timeout if timeout is not None else None
        self.timeout = timeout

    def seen(self, event: JobEvent) -> bool:
        """True when the job has ended."""
        if self.bar is not None:
            p = event.job.progress
            losses = " ".join(f"{label} {v:.4g}" for label, v in (("meta-loss", p.meta_loss), ("eval", p.eval_loss))
                              if v is not None)
            self.bar.draw(p.iteration, p.total_iterations, elapsed=p.elapsed_s, eta=p.eta_s,
                          note=f"{event.job.state} {p.phase or ''} {losses}".strip())
        return event.event == "end" or event.job.done

    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise APITimeoutError(f"job {self.job_id} did not finish within {self.timeout:g} s (it goes on; "
                                  "wait again, or cancel it)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Jobs(SyncResource):
    def submit(self, spec: Mapping[str, Any] | None = None, **fields: Any) -> Job:
        """Queue a job. Everything but `name` has a default (the paper's setup); fields override `spec`."""
        return Job.from_json(self._client.json_of(self._client.send(_submit(spec, fields))))

    def list(self, *, state: str | None = None, limit: int = 100) -> list[Job]:
        return [Job.from_json(j) for j in self._client.json_of(self._client.send(_list(state, limit)))]

    def get(self, job_id: str) -> Job:
        return Job.from_json(self._client.json_of(
            self._client.send(RequestOptions("GET", f"{BASE}/{segment(job_id)}"))))

    def cancel(self, job_id: str) -> Job:
        """A queued job never starts; a running one stops before its next iteration."""
        return Job.from_json(self._client.json_of(
            self._client.send(RequestOptions("POST", f"{BASE}/{segment(job_id)}/cancel"))))

    def curve(self, job_id: str) -> JobCurve:
        """Meta-loss and validation loss at every iteration trained so far."""
        return JobCurve.from_json(self._client.json_of(self._client.send(_curve(job_id))))

    def events(self, job_id: str, *, timeout: float | None = None) -> Iterator[JobEvent]:
        """The job's progress as it happens, ending with the `end` event. `timeout`: most seconds to wait
        for the next line (the server sends a keep-alive every 15 s)."""
        response = self._client.send(_events(job_id, timeout))
        try:
            yield from (_event(sse) for sse in EventSource(response).iter_sse() if sse.data)
        except SSEError as exc:
            raise APIResponseError(f"the job event stream could not be read: {exc}", request=response.request) from exc
        except httpx.TransportError as exc:
            raise self._client.connection_error(exc, response.request) from exc
        finally:
            response.close()

    def wait(self, job_id: str, *, progress: bool = False, timeout: float | None = None) -> Job:
        """Block until the job ends and return it; `progress=True` draws a bar on stderr."""
        waiter = _Waiter(job_id, progress, timeout)
        try:
            while True:   # the server ends a stream that saw no change for a while: listen again
                for event in self.events(job_id, timeout=timeout):
                    if waiter.seen(event):
                        return event.job
                    waiter.check_deadline()
                job = self.get(job_id)
                if job.done:
                    return job
                waiter.check_deadline()
        except APITimeoutError:
            waiter.check_deadline()
            raise
        finally:
            waiter.close()


class AsyncJobs(AsyncResource):
    async def submit(self, spec: Mapping[str, Any] | None = None, **fields: Any) -> Job:
        return Job.from_json(self._client.json_of(await self._client.send(_submit(spec, fields))))

    async def list(self, *, state: str | None = None, limit: int = 100) -> list[Job]:
        return [Job.from_json(j) for j in self._client.json_of(await self._client.send(_list(state, limit)))]

    async def get(self, job_id: str) -> Job:
        return Job.from_json(self._client.json_of(
            await self._client.send(RequestOptions("GET", f"{BASE}/{segment(job_id)}"))))

    async def cancel(self, job_id: str) -> Job:
        return Job.from_json(self._client.json_of(
            await self._client.send(RequestOptions("POST", f"{BASE}/{segment(job_id)}/cancel"))))

    async def curve(self, job_id: str) -> JobCurve:
        return JobCurve.from_json(self._client.json_of(await self._client.send(_curve(job_id))))

    async def events(self, job_id: str, *, timeout: float | None = None) -> AsyncIterator[JobEvent]:
        response = await self._client.send(_events(job_id, timeout))
        try:
            async for sse in EventSource(response).aiter_sse():
                if sse.data:
                    yield _event(sse)
        except SSEError as exc:
            raise APIResponseError(f"the job event stream could not be read: {exc}", request=response.request) from exc
        except httpx.TransportError as exc:
            raise self._client.connection_error(exc, response.request) from exc
        finally:
            await response.aclose()

    async def wait(self, job_id: str, *, progress: bool = False, timeout: float | None = None) -> Job:
        waiter = _Waiter(job_id, progress, timeout)
        try:
            while True:   # the server ends a stream that saw no change for a while: listen again
                async for event in self.events(job_id, timeout=timeout):
                    if waiter.seen(event):
                        return event.job
                    waiter.check_deadline()
                job = await self.get(job_id)
                if job.done:
                    return job
                waiter.check_deadline()
        except APITimeoutError:
            waiter.check_deadline()
            raise
        finally:
            waiter.close()
