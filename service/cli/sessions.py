"""`l2o sessions`: your key's sessions on an l2o server, through the SDK.

    l2o sessions list [--json]
    l2o sessions delete SESSION_ID [SESSION_ID ...]
    l2o sessions prune [--idle SECONDS] [--dry-run]     delete those unused for SECONDS (0: every one)

A key holds at most L2O_SESSION_MAX_PER_KEY sessions at once; pruning frees the ones a crashed script left.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

from client import Client, SessionNotFoundError
from service.cli.errors import CliError, ExitCode
from service.cli.output import add_json_option, print_json, print_table
from service.cli.remote import with_client


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sessions", help="your sessions on an l2o server", description=__doc__)
    commands = p.add_subparsers(dest="sessions_command", required=True, metavar="COMMAND")

    ls = commands.add_parser("list", help="your key's sessions, with their step and when they were last used")
    add_json_option(ls)
    ls.set_defaults(func=with_client(list_sessions))

    delete = commands.add_parser("delete", help="delete sessions by id")
    delete.add_argument("ids", nargs="+", metavar="SESSION_ID", help="a session id (s_...)")
    delete.set_defaults(func=with_client(delete_sessions))

    prune = commands.add_parser("prune", help="delete your sessions that have been idle a while")
    prune.add_argument("--idle", type=float, default=3600.0, metavar="SECONDS",
                       help="delete sessions unused for at least this long; 0 deletes every one")
    prune.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    prune.set_defaults(func=with_client(prune_sessions))


def list_sessions(args: argparse.Namespace, client: Client) -> int:
    sessions = client.sessions.list()
    if args.json:
        print_json([s.raw for s in sessions])
        return 0
    print_table(["ID", "OPTIMIZER", "STEP", "COORDS", "STATE BYTES", "LAST USED", "EXPIRES"],
                [[s.id, s.optimizer.reference, s.step, s.n_coords, s.state_bytes, s.last_used_at, s.expires_at]
                 for s in sessions])
    return 0


def delete_sessions(args: argparse.Namespace, client: Client) -> int:
    for session_id in args.ids:
        client.sessions.delete(session_id)
        print(f"deleted {session_id}")
    return 0


def prune_sessions(args: argparse.Namespace, client: Client) -> int:
    if args.idle < 0:
        raise CliError(f"--idle must be >= 0 seconds, got {args.idle:g}", ExitCode.USAGE)
    cutoff = datetime.now(UTC) - timedelta(seconds=args.idle)
    idle = [s for s in client.sessions.list() if args.idle == 0 or (s.last_used_at or s.created_at) <= cutoff]
    for s in idle:
        if not args.dry_run:
            try:
                client.sessions.delete(s.id)
            except SessionNotFoundError:
                continue  # expired or deleted meanwhile: gone either way
        print(f"{'would delete' if args.dry_run else 'deleted'} {s.id} ({s.optimizer.reference}, step {s.step}, "
              f"last used {s.last_used_at or s.created_at:%Y-%m-%d %H:%M:%S})")
    print(f"{len(idle)} session(s) idle for {args.idle:g} s or more {'found' if args.dry_run else 'deleted'}")
    return 0
