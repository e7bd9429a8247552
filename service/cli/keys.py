"""`l2o keys create|list|revoke`: manage API keys directly in the database (no server needed).

The database is L2O_DATABASE_URL (default: the embedded SQLite file under L2O_DATA_DIR). `admin` implies
every scope; `optimize` and `train` grant only themselves.
"""

from __future__ import annotations

import argparse
import sys

from service.cli.output import add_json_option, print_json, print_table


def register(subparsers: argparse._SubParsersAction) -> None:
    from service.registry.keys import SCOPES

    p = subparsers.add_parser("keys", help="manage API keys", description=__doc__)
    sub = p.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    create = sub.add_parser("create", help="create a key and print it (shown this once)")
    create.add_argument("--name", required=True, help="what the key is for")
    create.add_argument("--scope", action="append", required=True, choices=SCOPES, dest="scopes",
                        help="a scope to grant; repeat for several")
    create.set_defaults(func=create_key)
    ls = sub.add_parser("list", help="list keys (never the keys themselves)")
    add_json_option(ls)
    ls.set_defaults(func=list_keys)
    revoke = sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("id", type=int, help="the key's id, as `l2o keys list` shows it")
    revoke.set_defaults(func=revoke_key)
    boot = sub.add_parser("bootstrap", help="when the database holds no live key, create an admin key and write "
                                            "it to <data dir>/admin.key (L2O_DATA_DIR); else do nothing")
    boot.set_defaults(func=bootstrap_key)


def _run(action):
    """`action(session)` in one transaction on the configured database; errors propagate to the command's
    one-line report."""
    from service.config import Settings
    from service.registry import migrate
    from service.registry.db import Database

    settings = Settings()
    migrate.ensure_schema(settings.db_url, embedded=settings.embedded)
    db = Database(settings.db_url)
    try:
        with db.session() as session:
            result = action(session)
            session.commit()
            return result
    finally:
        db.dispose()


def create_key(args: argparse.Namespace) -> int:
    from service.registry import keys

    row, key = _run(lambda s: keys.create_key(s, args.name, args.scopes))
    print(f"created key {row.id} ({row.name}, scopes: {' '.join(row.scopes)}); it is shown only this once:",
          file=sys.stderr)
    print(key)
    return 0


def list_keys(args: argparse.Namespace) -> int:
    from service.registry import keys

    rows = _run(keys.list_keys)
    if args.json:
        print_json([{"id": k.id, "name": k.name, "prefix": k.prefix, "scopes": k.scopes, "created_at": k.created_at,
                     "revoked_at": k.revoked_at} for k in rows])
        return 0
    print_table(["ID", "PREFIX", "SCOPES", "STATE", "NAME"],
                [[k.id, f"{k.prefix}…", ",".join(k.scopes), f"revoked {k.revoked_at:%Y-%m-%d}" if k.revoked_at
                  else "live", k.name] for k in rows])
    return 0


def revoke_key(args: argparse.Namespace) -> int:
    from service.registry import keys

    row = _run(lambda s: keys.revoke_key(s, args.id))
    print(f"revoked key {row.id} ({row.name})")
    return 0


def bootstrap_key(args: argparse.Namespace) -> int:
    """What the embedded server does on first start, for a configured database (compose's one-shot
    `admin-key` service): the first admin key, written to a file only its owner can read."""
    from service.config import Settings
    from service.registry import bootstrap, migrate
    from service.registry.db import Database

    settings = Settings()
    migrate.ensure_schema(settings.db_url, embedded=settings.embedded)
    db = Database(settings.db_url)
    try:
        written = bootstrap.ensure_admin_key(db, settings.admin_key_path)
    finally:
        db.dispose()
    print(f"wrote an admin key to {written}" if written else "the database already holds a live key: none written")
    return 0
