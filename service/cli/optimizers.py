"""`l2o optimizers`: the registry on an l2o server, through the SDK.

    l2o optimizers list [--json]
    l2o optimizers search [TEXT] [--tag KEY[:VALUE]]...   names containing TEXT, holding every tag
    l2o optimizers show NAME | NAME:VERSION | NAME@ALIAS [--json]
    l2o optimizers download REFERENCE [--out FILE]
    l2o optimizers upload NAME PATH [--alias ALIAS] [--description TEXT] [--tag KEY=VALUE]...
                                                          PATH: a checkpoint folder (l2o train --out, whose
                                                          evaluation.json rides along) or file
    l2o optimizers describe NAME[:VERSION] TEXT           set the description (--clear: remove it)
    l2o optimizers tag NAME[:VERSION] KEY=VALUE... [--delete KEY]...
    l2o optimizers evaluate NAME:VERSION [--family F --param K=V] [--steps N] [--watch]
    l2o optimizers alias NAME ALIAS VERSION               point ALIAS at VERSION (or --delete it)
    l2o optimizers delete NAME:VERSION                    delete a version and its aliases
    l2o optimizers delete NAME --all-versions             delete the name with every version

Uploads, aliases and deletion need an admin key; describing, tagging and evaluating need the key whose
job created the name, or an admin key.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from client import Client
from service.cli.errors import CliError, ExitCode
from service.cli.jobs import follow
from service.cli.options import parse_params
from service.cli.output import add_json_option, print_json, print_table
from service.cli.remote import with_client

WEIGHTS_FILE = "weights.safetensors"  # what a checkpoint folder holds (service.lopt.checkpoint)
EVALUATION_FILE = "evaluation.json"    # the report `l2o train` writes beside it


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("optimizers", help="the optimizer registry on an l2o server", description=__doc__)
    commands = p.add_subparsers(dest="optimizers_command", required=True, metavar="COMMAND")

    ls = commands.add_parser("list", help="registered optimizers, their newest version and aliases")
    add_json_option(ls)
    ls.set_defaults(func=with_client(list_optimizers))

    search = commands.add_parser("search", help="names containing TEXT and holding every --tag")
    search.add_argument("text", nargs="?", default=None, help="a part of the name")
    search.add_argument("--tag", action="append", default=[], metavar="KEY[:VALUE]",
                        help="a tag the name must hold (KEY alone: any value); repeat for several")
    add_json_option(search)
    search.set_defaults(func=with_client(search_optimizers))

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
    up.add_argument("--description", help="the version's description")
    up.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="a tag of the version; "
                                                                                   "repeat for several")
    up.add_argument("--no-evaluation", action="store_true",
                    help=f"leave out the folder's {EVALUATION_FILE} (it is sent by default)")
    add_json_option(up)
    up.set_defaults(func=with_client(upload))

    describe = commands.add_parser("describe", help="set the description of a name or a version")
    describe.add_argument("reference", help="NAME, or NAME:VERSION for one version")
    describe.add_argument("text", nargs="?", help="the description")
    describe.add_argument("--clear", action="store_true", help="remove the description instead")
    add_json_option(describe)
    describe.set_defaults(func=with_client(describe_optimizer))

    tag = commands.add_parser("tag", help="set or delete tags of a name or a version")
    tag.add_argument("reference", help="NAME, or NAME:VERSION for one version")
    tag.add_argument("tags", nargs="*", metavar="KEY=VALUE", help="tags to set (others are kept)")
    tag.add_argument("--delete", action="append", default=[], metavar="KEY", help="a tag to remove; repeat")
    add_json_option(tag)
    tag.set_defaults(func=with_client(tag_optimizer))

    ev = commands.add_parser("evaluate", help="evaluate a version against tuned baselines, as a job, and "
                                              "attach the report to it")
    ev.add_argument("reference", help="NAME:VERSION")
    ev.add_argument("--family", help="task family (default: the one it was trained on)")
    ev.add_argument("--param", action="append", metavar="KEY=VALUE", help="a family parameter (with --family)")
    ev.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                    help="an evaluation setting: steps, instances, tune_instances, baselines, lr_grid, seed")
    ev.add_argument("--watch", action="store_true", help="follow the job until it ends")
    add_json_option(ev)
    ev.set_defaults(func=with_client(evaluate))

    alias = commands.add_parser("alias", help="point an alias at a version, or delete it (admin)")
    alias.add_argument("name", help="the registry name")
    alias.add_argument("alias", help="the alias, e.g. prod")
    alias.add_argument("version", nargs="?", type=int, help="the version to point it at")
    alias.add_argument("--delete", action="store_true", help="delete the alias instead")
    alias.set_defaults(func=with_client(set_alias))

    delete = commands.add_parser("delete", help="delete a version and its aliases, or a whole name (admin); "
                                                "refused while a session uses it")
    delete.add_argument("reference", help="NAME:VERSION, or NAME with --all-versions")
    delete.add_argument("--all-versions", action="store_true", help="delete the whole name")
    delete.set_defaults(func=with_client(delete_version))


def list_optimizers(args: argparse.Namespace, client: Client) -> int:
    optimizers = client.optimizers.list()
    if args.json:
        print_json([o.raw for o in optimizers])
        return 0
    print_table(["NAME", "LATEST", "VERSIONS", "ALIASES", "CREATED"],
                [[o.name, o.latest_version, o.version_count, aliases(o.aliases), o.created_at] for o in optimizers])
    return 0


def search_optimizers(args: argparse.Namespace, client: Client) -> int:
    filters: dict[str, str | None] = {}
    for item in args.tag:
        key, sep, value = item.partition(":")
        filters[key] = value if sep else None
    optimizers = client.optimizers.list(q=args.text, tags=filters)
    if args.json:
        print_json([o.raw for o in optimizers])
        return 0
    print_table(["NAME", "LATEST", "VERSIONS", "TAGS", "DESCRIPTION"],
                [[o.name, o.latest_version, o.version_count, tag_text(o.tags), first_line(o.description)]
                 for o in optimizers])
    return 0


def show_optimizer(args: argparse.Namespace, client: Client) -> int:
    if ":" not in args.reference and "@" not in args.reference:
        optimizer = client.optimizers.get(args.reference)
        if args.json:
            print_json(optimizer.raw)
            return 0
        print(f"{optimizer.name}: {optimizer.version_count} version(s), aliases {aliases(optimizer.aliases)}, "
              f"tags {tag_text(optimizer.tags) or '-'}")
        if optimizer.description:
            print(optimizer.description)
        print_table(["VERSION", "REFERENCE", "SHA256", "BYTES", "SOURCE", "JOB", "ALIASES", "TAGS", "CREATED"],
                    [[v.version, v.reference, v.sha256[:16], v.size, v.source, v.job_id, ",".join(v.aliases) or None,
                      tag_text(v.tags), v.created_at] for v in optimizer.versions])
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
            ("description", first_line(version.description)), ("tags", tag_text(version.tags)),
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
    report = args.path / EVALUATION_FILE if args.path.is_dir() else None
    evaluation = report if report is not None and report.is_file() and not args.no_evaluation else None
    version = client.optimizers.upload(args.name, path.read_bytes(), description=args.description,
                                       tags=key_values(args.tag) or None, evaluation=evaluation)
    for alias in args.alias:
        client.optimizers.set_alias(args.name, alias, version.version)
    if args.json:
        print_json(client.optimizers.version(args.name, version.version).raw)
        return 0
    also = f", aliases {', '.join(args.alias)}" if args.alias else ""
    also += ", with its evaluation" if evaluation is not None else ""
    print(f"registered {version.reference} (sha256 {version.sha256[:16]}…{also})")
    return 0


def describe_optimizer(args: argparse.Namespace, client: Client) -> int:
    if args.clear == (args.text is not None):
        raise CliError("give the description TEXT, or --clear to remove it", ExitCode.USAGE)
    return _edit(args, client, description=None if args.clear else args.text)


def tag_optimizer(args: argparse.Namespace, client: Client) -> int:
    patch: dict[str, str | None] = {**key_values(args.tags), **dict.fromkeys(args.delete)}
    if not patch:
        raise CliError("give tags to set (KEY=VALUE) or --delete KEY", ExitCode.USAGE)
    return _edit(args, client, tags=patch)


def _edit(args: argparse.Namespace, client: Client, **changes: Any) -> int:
    name, sep, number = args.reference.partition(":")
    if sep and not number.isdigit():
        raise CliError(f"give NAME or NAME:VERSION, not {args.reference!r}", ExitCode.USAGE)
    edited = (client.optimizers.update_version(name, int(number), **changes) if sep
              else client.optimizers.update(name, **changes))
    if args.json:
        print_json(edited.raw)
        return 0
    print(f"{args.reference}: description {first_line(edited.description) or '-'}; "
          f"tags {tag_text(edited.tags) or '-'}")
    return 0


def evaluate(args: argparse.Namespace, client: Client) -> int:
    name, sep, number = args.reference.partition(":")
    if not sep or not number.isdigit():
        raise CliError(f"give the version to evaluate as NAME:VERSION, not {args.reference!r}", ExitCode.USAGE)
    if args.param and not args.family:
        raise CliError("--param needs --family", ExitCode.USAGE)
    try:
        family = {"name": args.family, "params": parse_params(args.param)} if args.family else None
        settings = parse_params(args.settings) or None
    except argparse.ArgumentTypeError as exc:
        raise CliError(str(exc), ExitCode.USAGE) from None
    job = client.optimizers.evaluate(name, int(number), family=family, evaluation=settings)
    if args.json and not args.watch:
        print_json(job.raw)
        return 0
    print(f"queued evaluation job {job.id} of {args.reference}; `l2o jobs watch {job.id}` to follow it")
    return follow(client, job.id) if args.watch else 0


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
    if args.all_versions:
        if sep:
            raise CliError("--all-versions deletes a whole name: give NAME, not NAME:VERSION", ExitCode.USAGE)
        client.optimizers.delete(name)
        print(f"deleted {name} and every version of it")
        return 0
    if not sep or not number.isdigit():
        raise CliError(f"give the version to delete as NAME:VERSION, not {args.reference!r} (or NAME "
                       "--all-versions to delete the whole name)", ExitCode.USAGE)
    client.optimizers.delete_version(name, int(number))
    print(f"deleted {name}:{number}")
    return 0


def key_values(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"expected KEY=VALUE, got {pair!r}", ExitCode.USAGE)
        out[key] = value
    return out


def tag_text(tags: dict[str, str]) -> str | None:
    return ",".join(f"{k}={v}" for k, v in sorted(tags.items())) or None


def first_line(text: str | None) -> str | None:
    return text.splitlines()[0] if text else None


def aliases(mapping: dict[str, int]) -> str | None:
    return ",".join(f"{a}->{v}" for a, v in sorted(mapping.items())) or None
