"""The SDK's side of the registry's metadata, sync and async alike: uploads that carry a description,
tags and an evaluation report, merge-patch edits, search across pages, evaluation jobs, deleting names;
and the server's errors as the SDK's classes."""

from __future__ import annotations

import json

import pytest

import client
from client import AsyncClient, Client
from tests.client.conftest import OPTIMIZER
from tests.conftest import checkpoint_bytes

REPORT = {"family": "quadratic", "steps": 2, "curves": {"lstm": {"mean": [1.0, 0.5, 0.2], "std": [0, 0, 0]}}}
TRAINED_ON = {"family": "quadratic", "params": {"dim": 3}}
SMALL = {"instances": 2, "steps": 3, "tune_instances": 2, "lr_grid": [0.1], "baselines": ["adam"]}


def test_sync(l2o: Client, tmp_path):
    path = tmp_path / "evaluation.json"
    path.write_text(json.dumps(REPORT))
    v = l2o.optimizers.upload("quad-a", checkpoint_bytes(trained_on=TRAINED_ON), description="first",
                              tags={"stage": "dev"}, evaluation=path, optimizer_tags={"family": "quadratic"})
    assert (v.description, v.tags, v.evaluation["curves"]["lstm"]["mean"]) == ("first", {"stage": "dev"},
                                                                              [1.0, 0.5, 0.2])
    assert l2o.optimizers.get("quad-a").tags == {"family": "quadratic"}

    edited = l2o.optimizers.update("quad-a", description="LSTMs", tags={"family": None, "owner": "me"})
    assert (edited.description, edited.tags) == ("LSTMs", {"owner": "me"})
    assert l2o.optimizers.update("quad-a", tags={"x": "y"}).description == "LSTMs"   # left out: unchanged
    assert l2o.optimizers.update_version("quad-a", 1, description=None).description is None

    for i in range(3):   # more names than one page holds follow the Link header
        l2o.optimizers.upload(f"quad-{i}", checkpoint_bytes(seed=i))
    names = ["quad-0", "quad-1", "quad-2", "quad-a"]
    assert [o.name for o in l2o.optimizers.list(q="quad-", page_size=3)] == names
    assert [o.name for o in l2o.optimizers.list(q="quad-", page_size=1)] == names
    assert [o.name for o in l2o.optimizers.list(tags={"owner": "me", "x": None})] == ["quad-a"]

    job = l2o.optimizers.evaluate("quad-a", 1, evaluation=SMALL)
    assert (job.kind, job.name, job.spec["version"]) == ("evaluate", "quad-a", 1)
    done = l2o.jobs.wait(job.id)
    assert done.state == "succeeded", done.error
    assert set(l2o.optimizers.version("quad-a", 1).evaluation["curves"]) == {"lstm", "adam"}

    with pytest.raises(client.UnprocessableEntityError) as info:
        l2o.optimizers.update("quad-a", tags={"bad key": "v"})
    assert info.value.code == "validation_error" and "invalid tag key" in info.value.message
    with pytest.raises(client.InvalidNameError):
        l2o.optimizers.delete("Not A Name")
    l2o.optimizers.delete("quad-a")
    with pytest.raises(client.NotFoundError):
        l2o.optimizers.get("quad-a")


async def test_async(async_l2o: AsyncClient):
    v = await async_l2o.optimizers.upload("quad-b", checkpoint_bytes(seed=3), description="d", tags={"k": "v"},
                                          evaluation=REPORT, optimizer_description="name's")
    assert (v.description, v.tags, v.evaluation["steps"]) == ("d", {"k": "v"}, 2)
    assert (await async_l2o.optimizers.get("quad-b")).description == "name's"
    assert (await async_l2o.optimizers.update("quad-b", tags={"a": "b"})).tags == {"a": "b"}
    assert (await async_l2o.optimizers.update_version("quad-b", 1, tags={"k": None})).tags == {}
    assert [o.name for o in await async_l2o.optimizers.list(q="quad")] == ["quad-b"]
    assert [o.name for o in await async_l2o.optimizers.list(page_size=1)] == ["quad-b", OPTIMIZER]
    with pytest.raises(client.UnprocessableEntityError):   # it says nothing of what it was trained on
        await async_l2o.optimizers.evaluate("quad-b", 1)
    await async_l2o.optimizers.delete("quad-b")
    with pytest.raises(client.NotFoundError):
        await async_l2o.optimizers.delete("quad-b")
