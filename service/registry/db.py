"""The engine and session factory: a SQLite file by default, PostgreSQL (postgresql+psycopg://) in production.

Handlers and worker tasks own the transaction (`with db.session() as s: ...; s.commit()`); services and
repositories only flush. A session closed without commit rolls back, so an error leaves nothing behind.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

# What the driver raises when the database cannot be reached (refused, reset, timed out, restarting): a
# 503 to clients, not a 500, and a cue to retry.
UNREACHABLE = (OperationalError, InterfaceError)
CONNECT_TIMEOUT_S = 5  # an unreachable host fails a request in seconds, not the OS's minutes


def make_engine(url: str, *, foreign_keys: bool = True, **kwargs: Any) -> Engine:
    """An engine for `url`. SQLite gets its parent directory created, WAL mode and enforced foreign keys.

    Migrations pass foreign_keys=False: SQLite's batch ALTER drops and recreates tables, and with
    enforcement on, dropping a referenced table would cascade into its children.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
            kwargs.setdefault("connect_args", {"connect_timeout": CONNECT_TIMEOUT_S})
        return create_engine(url, **kwargs)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    # The server runs handlers on a thread pool; a connection is used by one thread at a time.
    kwargs.setdefault("connect_args", {"check_same_thread": False, "timeout": 30})
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        if parsed.database and parsed.database != ":memory:":
            # WAL lets readers run beside the one writer; with it, NORMAL sync is still crash-safe.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    return engine


class Database:
    """One engine and its session factory, shared by the app, the worker and the CLI."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)
        # Objects stay readable after commit, so a handler can commit and then build its response.
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        parsed = make_url(url)
        # A plain SQLite file gets the kept key reader; an in-memory database or a URI with options
        # (sqlite:///file:...?mode=ro&uri=true) is read through the engine, which knows what they mean.
        self._sqlite_file = (parsed.database if parsed.get_backend_name() == "sqlite" and parsed.database
                             and parsed.database != ":memory:" and not parsed.query else None)
        self._readers = threading.local()

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        session = self.sessionmaker()
        try:
            yield session
        finally:
            try:
                session.close()
            except UNREACHABLE:
                # The connection died under the session (the database went away): there is nothing left to
                # roll back, and the pool has dropped the connection. Raising here would fail a request that
                # had already been answered.
                log.warning("database connection lost; closed the session without its rollback")

    @contextmanager
    def key_reader(self) -> Iterator[Connection | sqlite3.Connection]:
        """A connection for the one query every request makes, its API key's lookup (repository.
        get_key_by_hash). On a SQLite file: a sqlite3 connection this thread keeps open, in autocommit,
        so each lookup sees every committed change (a revoke takes effect at once); a pooled SQLAlchemy
        connection costs this lookup ten times over. Elsewhere: a connection from the pool, returned at
        once."""
        if self._sqlite_file is None:
            with self.engine.connect() as conn:
                yield conn
            return
        conn = getattr(self._readers, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self._sqlite_file, isolation_level=None, timeout=30)
            except sqlite3.Error as exc:
                raise OperationalError("connect", None, exc) from exc
            self._readers.conn = conn
        try:
            yield conn
        except UNREACHABLE:
            self._readers.conn = None   # the next lookup opens a fresh one
            conn.close()
            raise

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
