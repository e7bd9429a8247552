"""Shared fixtures: a migrated database on SQLite and on PostgreSQL, the app, a client and API keys.

`database_url` is parameterised over both backends, so every test that uses it (directly or through
`settings`, `app`, `client`) runs on both. PostgreSQL is the server on 127.0.0.1 (L2O_TEST_POSTGRES_URL
overrides): each test session creates its own uniquely named database and drops it at the end. When
PostgreSQL is unreachable its half of the tests is skipped, or fails when CI=true.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from sqlalchemy import make_url

POSTGRES_URL = os.environ.get("L2O_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
ALL_SCOPES = ("optimize", "train", "admin")


def _libpq(url: str, database: str | None = None) -> str:
    """A SQLAlchemy URL as a libpq connection string, optionally for another database."""
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def postgres_admin():
    """An autocommit connection to the test server's maintenance database, or a skip (a failure when
    CI=true) if the server is unreachable."""
    import psycopg

    try:
        return psycopg.connect(_libpq(POSTGRES_URL), autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL at {POSTGRES_URL} is unreachable and CI=true: {exc}")
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} is unreachable: {exc}")


class PostgresDatabases:
    """Creates uniquely named databases on the test server and drops every one of them at the end."""

    def __init__(self) -> None:
        self.conn = postgres_admin()
        self.names: list[str] = []

    def create(self) -> str:
        name = f"l2o_test_{os.getpid()}_{uuid.uuid4().hex[:12]}"
        self.conn.execute(f'CREATE DATABASE "{name}"')
        self.names.append(name)
        return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        self.conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.names.remove(name)

    def close(self) -> None:
        for name in list(self.names):
            self.conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.conn.close()


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    dbs = PostgresDatabases()
    yield dbs
    dbs.close()


@pytest.fixture(scope="session")
def postgres_migrated(postgres_databases: PostgresDatabases) -> str:
    """One PostgreSQL database for the session, migrated to head once; tests empty it before use."""
    from service.registry import migrate

    url = postgres_databases.create()
    migrate.upgrade(url)
    return url


@pytest.fixture(scope="session")
def sqlite_migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once; each test gets a copy."""
    from service.registry import migrate

    path = tmp_path_factory.mktemp("sqlite-template") / "l2o.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


def _empty_postgres(url: str) -> None:
    """Delete every row but the migration revision. DELETE, children before parents, is far quicker than
    TRUNCATE on tables this small."""
    import psycopg

    with psycopg.connect(_libpq(url)) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename <> 'alembic_version'")]
        edges = set(conn.execute(
            "SELECT c.conrelid::regclass::text, c.confrelid::regclass::text FROM pg_constraint c "
            "JOIN pg_namespace n ON n.oid = c.connamespace WHERE c.contype = 'f' AND n.nspname = current_schema()"
        ).fetchall())
        remaining = list(tables)
        while remaining:
            # Children first; a cycle (jobs <-> optimizer_versions, ON DELETE SET NULL) is broken anywhere.
            ready = [t for t in remaining if not any(c != t and (c, t) in edges for c in remaining)]
            for table in ready or remaining[:1]:
                conn.execute(f'DELETE FROM "{table}"')
                remaining.remove(table)
        conn.commit()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database at the migration head with no rows, on each backend in turn."""
    if request.param == "sqlite":
        path = tmp_path / "l2o.db"
        shutil.copyfile(request.getfixturevalue("sqlite_migrated"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("postgres_migrated")
    _empty_postgres(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema at all, on each backend in turn (for migration tests)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    dbs: PostgresDatabases = request.getfixturevalue("postgres_databases")
    url = dbs.create()
    yield url
    dbs.drop(url)


@pytest.fixture
def settings(database_url: str, tmp_path: Path):
    from service.config import Settings

    (tmp_path / "pretrained").mkdir(exist_ok=True)
    return Settings(data_dir=tmp_path / "data", database_url=database_url, pretrained_dir=tmp_path / "pretrained",
                    max_upload_bytes=1_000_000)


@pytest.fixture
def app(settings):
    from service.app import create_app

    return create_app(settings)


@pytest.fixture
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        yield c


@pytest.fixture
def make_key(app) -> Callable[..., str]:
    """make_key(*scopes) -> a new API key holding exactly those scopes."""
    from service.registry import keys

    def make(*scopes: str, name: str = "test") -> str:
        with app.state.db.session() as session:
            _, key = keys.create_key(session, name, scopes)
            session.commit()
        return key

    return make


@pytest.fixture
def admin_key(make_key) -> str:
    """A key with every scope."""
    return make_key(*ALL_SCOPES, name="admin")


@pytest.fixture
def admin_headers(admin_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_key}"}


def checkpoint_bytes(*, hidden_size: int = 4, num_layers: int = 1, seed: int = 0, **config) -> bytes:
    """A valid checkpoint of a freshly initialised CoordinatewiseLSTM (small, so tests stay fast)."""
    from service.lopt import Checkpoint, CoordinatewiseLSTM, OptimizerConfig

    cfg = OptimizerConfig(hidden_size=hidden_size, num_layers=num_layers, **config)
    net = CoordinatewiseLSTM(cfg, generator=torch.Generator().manual_seed(seed))
    return Checkpoint(cfg, {k: v.detach() for k, v in net.weights().items()}).to_bytes()


@pytest.fixture
def make_checkpoint() -> Callable[..., bytes]:
    """make_checkpoint(hidden_size=4, num_layers=1, seed=0, **config) -> safetensors bytes."""
    return checkpoint_bytes
