"""`l2o keys create|list|revoke`: manage API keys directly in the database (no server needed)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    from service.registry.keys import SCOPES

    p = subparsers.add_parser("keys", help="manage API keys", description="Manage API keys in the database.")
    sub = p.add_subparsers(dest="keys_command", required=True)
    create = sub.add_parser("create", help="create a key and print it (shown this once)")
    create.add_argument("--name", required=True, help="what the key is for")
    create.add_argument("--scope", action="append", required=True, choices=SCOPES, dest="scopes",
                        help="a scope to grant; repeat for several")
    create.set_defaults(func=create_key)
    ls = sub.add_parser("list", help="list keys (never the keys themselves)")
    ls.set_defaults(func=list_keys)
    revoke = sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("id", type=int)
    revoke.set_defaults(func=revoke_key)


def _database():
    from service.config import Settings
    from service.registry import migrate
    from service.registry.db import Database

    settings = Settings()
    migrate.ensure_schema(settings.db_url, embedded=settings.embedded)
    return Database(settings.db_url)


def _run(action):
    """Run `action(session)` in one transaction; an L2OError is printed and gives None."""
    from service.errors import L2OError

    try:
        db = _database()
    except L2OError as exc:
        print(f"l2o keys: {exc.message}", file=sys.stderr)
        return None
    try:
        with db.session() as session:
            result = action(session)
            session.commit()
            return result
    except L2OError as exc:
        print(f"l2o keys: {exc.message}", file=sys.stderr)
        return None
    finally:
        db.dispose()


def create_key(args: argparse.Namespace) -> int:
    from service.registry import keys

    created = _run(lambda s: keys.create_key(s, args.name, args.scopes))
    if created is None:
        return 1
    row, key = created
    print(f"created key {row.id} ({row.name}, scopes: {' '.join(row.scopes)}); it is shown only this once:",
          file=sys.stderr)
    print(key)
    return 0


def list_keys(args: argparse.Namespace) -> int:
    from service.registry import keys

    rows = _run(keys.list_keys)
    if rows is None:
        return 1
    for k in rows:
        state = f"revoked {k.revoked_at:%Y-%m-%d}" if k.revoked_at else "live"
        print(f"{k.id}\t{k.prefix}…\t{','.join(k.scopes)}\t{state}\t{k.name}")
    return 0


def revoke_key(args: argparse.Namespace) -> int:
    from service.registry import keys

    row = _run(lambda s: keys.revoke_key(s, args.id))
    if row is None:
        return 1
    print(f"revoked key {row.id} ({row.name})")
    return 0
