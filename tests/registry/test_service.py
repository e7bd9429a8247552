"""The registry's operations on both databases: numbering, references, aliases, deletion."""

from __future__ import annotations

import pytest
import torch

from service.errors import InvalidCheckpoint, InvalidReference, NotFound, VersionInUse
from service.lopt import Checkpoint
from service.registry import repository
from service.registry import service as registry
from service.registry.db import Database
from tests.conftest import checkpoint_bytes


@pytest.fixture
def db(database_url):
    database = Database(database_url)
    yield database
    database.dispose()


def register(db: Database, name: str, seed: int = 0, **kwargs) -> int:
    with db.session() as s:
        version = registry.register_version(s, name, checkpoint_bytes(seed=seed), **kwargs)
        s.commit()
        return version.version


def test_versions_are_numbered_and_numbers_are_never_reused(db):
    assert [register(db, "lstm", seed) for seed in range(3)] == [1, 2, 3]
    with db.session() as s:
        registry.delete_version(s, "lstm", 3)
        s.commit()
    assert register(db, "lstm", 9) == 4
    assert register(db, "other") == 1
    with db.session() as s:
        assert [v.version for v in registry.get_optimizer(s, "lstm").versions] == [1, 2, 4]


def test_references_resolve_to_the_right_version(db):
    for seed in range(3):
        register(db, "lstm", seed)
    with db.session() as s:
        registry.set_alias(s, "lstm", "prod", 2)
        s.commit()
    with db.session() as s:
        assert registry.resolve(s, "lstm").version == 3
        assert registry.resolve(s, "lstm:1").version == 1
        assert registry.resolve(s, "lstm@prod").version == 2
        loaded = registry.load(s, "lstm:2")
        expected = Checkpoint.from_bytes(checkpoint_bytes(seed=1))
        assert loaded.reference == "lstm:2" and loaded.checkpoint.config == expected.config
        assert all(torch.equal(loaded.checkpoint.weights[k], w) for k, w in expected.weights.items())


@pytest.mark.parametrize("ref, error, fragment", [
    ("nope", NotFound, "no optimizer named 'nope'"),
    ("nope:1", NotFound, "no optimizer named 'nope'"),
    ("nope@prod", NotFound, "no optimizer named 'nope'"),
    ("lstm:7", NotFound, "has no version 7"),
    ("lstm@staging", NotFound, "has no alias 'staging'"),
    ("lstm:x", InvalidReference, "integer"),
])
def test_unresolvable_references_say_what_is_missing(db, ref, error, fragment):
    register(db, "lstm")
    with db.session() as s, pytest.raises(error, match=fragment):
        registry.resolve(s, ref)


def test_an_alias_moves_and_goes_with_its_version(db):
    register(db, "lstm", 0)
    register(db, "lstm", 1)
    with db.session() as s:
        registry.set_alias(s, "lstm", "prod", 1)
        registry.set_alias(s, "lstm", "prod", 2)
        registry.set_alias(s, "lstm", "old", 1)
        s.commit()
    with db.session() as s:
        assert registry.resolve(s, "lstm@prod").version == 2
        registry.delete_version(s, "lstm", 1)
        s.commit()
    with db.session() as s:
        assert [a.name for a in registry.get_optimizer(s, "lstm").aliases] == ["prod"]
        with pytest.raises(NotFound, match="no alias 'old'"):
            registry.resolve(s, "lstm@old")
        with pytest.raises(NotFound, match="no version 9"):
            registry.set_alias(s, "lstm", "prod", 9)


def test_a_version_in_use_is_not_deleted(db):
    register(db, "lstm")
    with db.session() as s:
        version_id = registry.resolve(s, "lstm:1").id
        with pytest.raises(VersionInUse, match="in use by a live session"):
            registry.delete_version(s, "lstm", 1, is_version_in_use=lambda vid: vid == version_id)
        s.commit()
    with db.session() as s:
        assert registry.resolve(s, "lstm").version == 1


def test_a_failed_registration_leaves_no_name_behind(db):
    with db.session() as s:
        with pytest.raises(InvalidCheckpoint):
            registry.register_version(s, "fresh", b"not a checkpoint")
        s.commit()
        assert repository.get_optimizer(s, "fresh") is None


def test_register_if_new_registers_each_distinct_checkpoint_once(db):
    data = checkpoint_bytes()
    with db.session() as s:
        first = registry.register_if_new(s, "base", data, source="pretrained")
        again = registry.register_if_new(s, "base", data, source="pretrained")
        other = registry.register_if_new(s, "base", checkpoint_bytes(seed=5), source="pretrained")
        s.commit()
        assert (first.version, again, other.version) == (1, None, 2)
        assert first.source == "pretrained"


def test_lineage_and_evaluation_are_kept(db):
    from service.registry.models import Job

    with db.session() as s:
        job = Job(spec={"task": "quadratic"})
        s.add(job)
        s.flush()
        version = registry.register_version(s, "trained", checkpoint_bytes(), source="job", job_id=job.id,
                                            evaluation={"final_loss": 0.5})
        job.result_version_id = version.id
        s.commit()
        job_id = job.id
    with db.session() as s:
        version = registry.resolve(s, "trained")
        assert version.job_id == job_id and version.evaluation == {"final_loss": 0.5} and version.source == "job"
