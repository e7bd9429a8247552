"""The migrations are the schema: they go up and down cleanly and match the models on both backends."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from service.errors import DatabaseNotReady
from service.registry import migrate
from service.registry.db import make_engine
from service.registry.models import Base

TABLES = {"api_keys", "optimizers", "optimizer_versions", "aliases", "jobs", "job_points", "optimizer_tags",
          "version_tags"}


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def revision_of(url: str) -> str | None:
    engine = make_engine(url)
    try:
        return migrate.current_revision(engine)
    finally:
        engine.dispose()


def test_upgrade_from_empty_then_downgrade_one_step_then_upgrade_again(empty_database_url):
    url = empty_database_url
    head = migrate.head_revision()
    previous = migrate.scripts().get_revision(head).down_revision
    assert tables(url) == set() and revision_of(url) is None

    migrate.upgrade(url)
    assert TABLES <= tables(url)
    assert revision_of(url) == head

    migrate.downgrade(url, "-1")
    assert revision_of(url) == previous
    if previous is None:
        assert tables(url) == set()

    migrate.upgrade(url)
    assert TABLES <= tables(url) and revision_of(url) == head


def test_the_models_match_the_migrated_schema(database_url):
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"include_name": migrate.include_name})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], f"models and migrations disagree: write a migration ({diff})"


def test_a_database_behind_head_is_refused_with_the_command_that_fixes_it(empty_database_url):
    engine = make_engine(empty_database_url)
    try:
        with pytest.raises(DatabaseNotReady, match="run `l2o db upgrade`"):
            migrate.check_at_head(engine)
        migrate.upgrade(empty_database_url)
        migrate.check_at_head(engine)
        migrate.downgrade(empty_database_url, "-1")
        with pytest.raises(DatabaseNotReady, match="l2o db upgrade"):
            migrate.check_at_head(engine)
    finally:
        engine.dispose()


def test_ensure_schema_creates_only_the_embedded_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    with pytest.raises(DatabaseNotReady, match="l2o db upgrade"):
        migrate.ensure_schema(url, embedded=False)
    assert tables(url) == set()
    assert migrate.ensure_schema(url, embedded=True) is True
    assert TABLES <= tables(url)
    assert migrate.ensure_schema(url, embedded=True) is False
