"""`l2o optimizers`: the registry on an l2o server, through the SDK.

    l2o optimizers list [--json]
    l2o optimizers show NAME | NAME:VERSION | NAME@ALIAS [--json]
    l2o optimizers download REFERENCE [--out FILE]
    l2o optimizers upload NAME PATH [--alias ALIAS]       PATH: a checkpoint folder (l2o train --out) or file
    l2o optimizers alias NAME ALIAS VERSION               point ALIAS at VERSION (or --delete it)
    l2o optimizers delete NAME:VERSION                    delete a version and its aliases

Uploads, aliases and deletion need an admin key. The API deletes versions, not whole names.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from client import Client
from service.cli.errors import CliError, ExitCode
from service.cli.output import add_json_option, print_json, print_table
from service.cli.remote import with_client

WEIGHTS_FILE = "weights.safetensors"  # what a checkpoint folder holds (service.lopt.checkpoint)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("optimizers", help="the optimizer registry on an l2o server", description=__doc__)
    commands = p.add_subparsers(dest="optimizers_command", required=True, metavar="COMMAND")

    ls = commands.add_parser("list", help="registered optimizers, their newest version and aliases")
    add_json_option(ls)
    ls.set_defaults(func=with_client(list_optimizers))

    show = commands.add_parser("show", help="an optimizer's versions and aliases, or one version's detail")
    show.add_argument("reference", help="NAME for the optimizer; NAME:VERSION or NAME@ALIAS for one version")
    add_json_option(show)
    show.set_defaults(func=with_client(show_optimizer))

    down = commands.add_parser("download", help="save a version's checkpoint (its sha256 is checked)")
    down.add_argument("reference", help="NAME (its latest version), NAME:VERSION or NAME@ALIAS")
    down.add_argument("--out", type=Path, help="file to write (default: NAME-VERSION.safetensors here)")
    down.set_defaults(func=with_client(download))

    up = commands.add_parser("upload", help="register a checkpoint as the next version of NAME (admin)")
    up.add_argument("name", help="the registry name")
    up.add_argument("path", type=Path, help=f"a checkpoint folder (holding {WEIGHTS_FILE}) or a safetensors file")
    up.add_argument("--alias", action="append", default=[], help="also point this alias at the new version; "
                                                                 "repeat for several")
    up.set_defaults(func=with_client(upload))

    alias = commands.add_parser("alias", help="point an alias at a version, or delete it (admin)")
    alias.add_argument("name", help="the registry name")
    alias.add_argument("alias", help="the alias, e.g. prod")
    alias.add_argument("version", nargs="?", type=int, help="the version to point it at")
    alias.add_argument("--delete", action="store_true", help="delete the alias instead")
    alias.set_defaults(func=with_client(set_alias))

    delete = commands.add_parser("delete", help="delete a version and its aliases (admin); refused while a "
                                                "session uses it")
    delete.add_argument("reference", help="NAME:VERSION")
    delete.set_defaults(func=with_client(delete_version))


def list_optimizers(args: argparse.Namespace, client: Client) -> int:
    optimizers = client.optimizers.list()
    if args.json:
        print_json([o.raw for o in optimizers])
        return 0
    print_table(["NAME", "LATEST", "VERSIONS", "ALIASES", "CREATED"],
                [[o.name, o.latest_version, o.version_count, aliases(o.aliases), o.created_at] for o in optimizers])
    return 0


def show_optimizer(args: argparse.Namespace, client: Client) -> int:
    if ":" not in args.reference and "@" not in args.reference:
        optimizer = client.optimizers.get(args.reference)
        if args.json:
            print_json(optimizer.raw)
            return 0
        print(f"{optimizer.name}: {optimizer.version_count} version(s), aliases {aliases(optimizer.aliases)}")
        print_table(["VERSION", "REFERENCE", "SHA256", "BYTES", "SOURCE", "JOB", "ALIASES", "CREATED"],
                    [[v.version, v.reference, v.sha256[:16], v.size, v.source, v.job_id, ",".join(v.aliases) or None,
                      v.created_at] for v in optimizer.versions])
        return 0
    version = client.optimizers.resolve(args.reference)
    if args.json:
        print_json(version.raw)
        return 0
    config = version.config or {}
    trained_on = config.get("trained_on") or {}
    rows = [("reference", version.reference), ("sha256", version.sha256), ("bytes", version.size),
            ("source", version.source), ("job", version.job_id), ("aliases", ",".join(version.aliases) or None),
            ("created", version.created_at),
            ("network", ", ".join([config.get("architecture", "lstm")] + [f"{k} {config[k]}" for k in (
                "hidden_size", "num_layers", "preprocess") if k in config])),
            ("trained on", trained_on.get("family")),
            ("evaluation", "attached (--json shows it)" if version.evaluation else None)]
    print_table(["FIELD", "VALUE"], rows)
    return 0


def download(args: argparse.Namespace, client: Client) -> int:
    checkpoint = client.optimizers.download(args.reference)
    out = args.out or Path(f"{checkpoint.name}-{checkpoint.version}.safetensors")
    checkpoint.save(out)
    print(f"saved {checkpoint.reference} to {out} (sha256 {checkpoint.sha256[:16]}…, {len(checkpoint.data):,} bytes)")
    return 0


def upload(args: argparse.Namespace, client: Client) -> int:
    path = args.path / WEIGHTS_FILE if args.path.is_dir() else args.path
    version = client.optimizers.upload(args.name, path.read_bytes())
    for alias in args.alias:
        client.optimizers.set_alias(args.name, alias, version.version)
    also = f", aliases {', '.join(args.alias)}" if args.alias else ""
    print(f"registered {version.reference} (sha256 {version.sha256[:16]}…{also})")
    return 0


def set_alias(args: argparse.Namespace, client: Client) -> int:
    if args.delete:
        if args.version is not None:
            raise CliError("give a VERSION or --delete, not both", ExitCode.USAGE)
        client.optimizers.delete_alias(args.name, args.alias)
        print(f"deleted {args.name}@{args.alias}")
        return 0
    if args.version is None:
        raise CliError("give the VERSION to point the alias at (or --delete to remove it)", ExitCode.USAGE)
    alias = client.optimizers.set_alias(args.name, args.alias, args.version)
    print(f"{alias.name}@{alias.alias} -> {alias.name}:{alias.version}")
    return 0


def delete_version(args: argparse.Namespace, client: Client) -> int:
    name, sep, number = args.reference.partition(":")
    if not sep or not number.isdigit():
        raise CliError(f"give the version to delete as NAME:VERSION, not {args.reference!r} (the API deletes "
                       "versions, not names)", ExitCode.USAGE)
    client.optimizers.delete_version(name, int(number))
    print(f"deleted {name}:{number}")
    return 0


def aliases(mapping: dict[str, int]) -> str | None:
    return ",".join(f"{a}->{v}" for a, v in sorted(mapping.items())) or None
