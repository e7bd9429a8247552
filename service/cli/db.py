"""`l2o db upgrade|downgrade|current|revision`: Alembic, configured from L2O_DATABASE_URL."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("db", help="database migrations", description="Manage the database schema.")
    sub = p.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    up = sub.add_parser("upgrade", help="migrate the database to the newest schema (or REVISION)")
    up.add_argument("revision", nargs="?", default="head", help="the Alembic revision to migrate to")
    up.set_defaults(func=upgrade)
    down = sub.add_parser("downgrade", help="migrate the database back to REVISION (e.g. -1)")
    down.add_argument("revision", help="the Alembic revision to migrate back to, or -N for N steps")
    down.set_defaults(func=downgrade)
    cur = sub.add_parser("current", help="print the database's revision and the code's head")
    cur.set_defaults(func=current)
    rev = sub.add_parser("revision", help="write a new migration script into migrations/versions (developers)")
    rev.add_argument("-m", "--message", required=True, help="what the migration does (names the script)")
    rev.add_argument("--autogenerate", action="store_true", help="diff the models against the database")
    rev.set_defaults(func=revision)


def _url() -> str:
    from service.config import Settings

    return Settings().db_url


def upgrade(args: argparse.Namespace) -> int:
    from service.registry import migrate

    migrate.upgrade(_url(), args.revision)
    print(f"database at {args.revision}")
    return 0


def downgrade(args: argparse.Namespace) -> int:
    from service.registry import migrate

    migrate.downgrade(_url(), args.revision)
    return 0


def current(args: argparse.Namespace) -> int:
    from service.registry import migrate
    from service.registry.db import make_engine

    engine = make_engine(_url())
    try:
        now, head = migrate.current_revision(engine), migrate.head_revision()
    finally:
        engine.dispose()
    print(f"current: {now or '(empty)'}\nhead:    {head}")
    return 0 if now == head else 1


def revision(args: argparse.Namespace) -> int:
    from service.registry import migrate

    migrate.revision(_url(), args.message, autogenerate=args.autogenerate)
    return 0
