"""The AsyncClient over httpx's ASGI transport: the same resources and errors as the sync client, awaited."""

from __future__ import annotations

import numpy as np
import pytest

import client
from client import AsyncClient
from tests.client.conftest import OPTIMIZER
from tests.client.test_resources import SHAPES, TINY_JOB, grads


async def test_optimizers(async_l2o: AsyncClient, ckpt: bytes):
    [summary] = await async_l2o.optimizers.list()
    assert summary.name == OPTIMIZER and summary.latest_version == 1
    assert [v.version for v in await async_l2o.optimizers.versions(OPTIMIZER)] == [1]
    alias = await async_l2o.optimizers.set_alias(OPTIMIZER, "prod", 1)
    assert alias.reference == "tiny@prod"
    assert (await async_l2o.optimizers.resolve("tiny@prod")).version == 1
    assert (await async_l2o.optimizers.get(OPTIMIZER)).aliases == {"prod": 1}
    assert (await async_l2o.optimizers.version(OPTIMIZER, 1)).config["hidden_size"] == 4
    assert (await async_l2o.optimizers.download("tiny@prod")).data == ckpt
    await async_l2o.optimizers.delete_alias(OPTIMIZER, "prod")
    with pytest.raises(client.NotFoundError):
        await async_l2o.optimizers.resolve("tiny@prod")


async def test_sessions(async_l2o: AsyncClient):
    session = await async_l2o.sessions.create(OPTIMIZER, SHAPES)
    first = await async_l2o.sessions.step(session.id, step=0, grads=grads(0))
    again = await async_l2o.sessions.step(session.id, step=0, grads=grads(0))  # a retry: the same answer
    assert first.step == again.step == 1
    assert all(np.array_equal(first.updates[n], again.updates[n]) for n in SHAPES)
    state = await async_l2o.sessions.state(session.id)
    resumed = await async_l2o.sessions.resume(state, optimizer="tiny:1")
    assert resumed.step == 1 and {s.id for s in await async_l2o.sessions.list()} == {session.id, resumed.id}
    await async_l2o.sessions.delete(session.id)
    with pytest.raises(client.SessionNotFoundError):
        await async_l2o.sessions.get(session.id)
    with pytest.raises(client.StepConflictError) as info:
        await async_l2o.sessions.step(resumed.id, step=3, grads=grads(1))
    assert info.value.expected == 1 and (await async_l2o.sessions.get(resumed.id)).step == 1


async def test_jobs(async_l2o: AsyncClient):
    job = await async_l2o.jobs.submit(TINY_JOB, name="async-job")
    events = [e async for e in async_l2o.jobs.events(job.id, timeout=60)]
    assert events[-1].event == "end" and events[-1].job.state == "succeeded"
    done = await async_l2o.jobs.wait(job.id, timeout=60)
    assert done.result.reference == "async-job:1"
    assert [j.id for j in await async_l2o.jobs.list(state="succeeded")] == [job.id]
    assert (await async_l2o.jobs.get(job.id)).state == "succeeded"
    assert (await async_l2o.jobs.curve(job.id)).iterations == list(range(1, done.progress.total_iterations + 1))
    with pytest.raises(client.JobFinishedError):
        await async_l2o.jobs.cancel(job.id)
