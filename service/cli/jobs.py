"""`l2o jobs`: submit, list, show, cancel and watch meta-training jobs on an l2o server, through the SDK.

    l2o jobs submit --name quad-small --family quadratic --param dim=10 --set training.iterations=100 --watch
    l2o jobs submit --spec job.json
    l2o jobs list [--state running] [--json]
    l2o jobs show JOB_ID [--json]
    l2o jobs watch JOB_ID          a progress bar until the job ends; exit status 0 only if it succeeded
    l2o jobs cancel JOB_ID
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from client import Client, Job
from service.cli.errors import CliError
from service.cli.options import parse_params
from service.cli.output import add_json_option, print_json, print_table
from service.cli.progress import ProgressBar, fmt_seconds
from service.cli.remote import with_client

__all__ = ["CliError", "build_spec", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("jobs", help="meta-training jobs on an l2o server", description=__doc__)
    jobs = p.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")

    s = jobs.add_parser("submit", help="submit a job; prints its id")
    s.add_argument("--spec", help="a JSON job spec file ('-' reads stdin); the options below override it")
    s.add_argument("--name", help="the registry name to publish the trained optimizer under")
    s.add_argument("--family", help="task family: quadratic, mlp, logistic, conv")
    s.add_argument("--param", action="append", metavar="KEY=VALUE", help="a family parameter, e.g. dim=10")
    s.add_argument("--set", action="append", metavar="FIELD=VALUE", dest="fields",
                   help="any spec field by its dotted path, e.g. training.iterations=100 or "
                        "evaluation.baselines='[\"adam\"]'")
    s.add_argument("--watch", action="store_true", help="then watch it until it ends")
    s.set_defaults(func=with_client(submit))

    ls = jobs.add_parser("list", help="your jobs, newest first (every job for an admin key)")
    ls.add_argument("--state", choices=["queued", "running", "succeeded", "failed", "cancelled"],
                    help="only jobs in this state")
    ls.add_argument("--limit", type=int, default=50, help="at most this many jobs")
    add_json_option(ls)
    ls.set_defaults(func=with_client(list_jobs))

    show_parser = jobs.add_parser("show", help="a job's state, progress and result")
    show_parser.add_argument("job_id", help="the job's id")
    add_json_option(show_parser)
    show_parser.set_defaults(func=with_client(show))
    for name, func, text in [("watch", watch, "a progress bar until the job ends; exit status 0 only if it "
                                              "succeeded"),
                             ("cancel", cancel, "cancel a queued or running job")]:
        c = jobs.add_parser(name, help=text)
        c.add_argument("job_id", help="the job's id")
        c.set_defaults(func=with_client(func))


# --- the commands -----------------------------------------------------------------------------------


def build_spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if args.spec:
        try:
            text = sys.stdin.read() if args.spec == "-" else Path(args.spec).read_text()
            spec = json.loads(text)
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read the spec {args.spec}: {exc}") from None
        if not isinstance(spec, dict):
            raise CliError(f"the spec {args.spec} must be a JSON object")
    if args.name:
        spec["name"] = args.name
    if args.family:
        spec.setdefault("family", {})["name"] = args.family
    try:
        if args.param:
            spec.setdefault("family", {}).setdefault("params", {}).update(parse_params(args.param))
        for path, value in parse_params(args.fields).items():
            *parents, leaf = path.split(".")
            node = spec
            for part in parents:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise CliError(f"--set {path}: {part} is not an object in the spec")
            node[leaf] = value
    except argparse.ArgumentTypeError as exc:
        raise CliError(str(exc)) from None
    if "name" not in spec:
        raise CliError("a job needs a name to publish under: --name NAME (or \"name\" in --spec)")
    return spec


def submit(args: argparse.Namespace, client: Client) -> int:
    job = client.jobs.submit(build_spec(args))
    print(job.id)
    print(f"queued {job.name}: {job.progress.total_iterations} iterations; `l2o jobs watch {job.id}` to follow it",
          file=sys.stderr)
    if args.watch:
        return follow(client, job.id)
    return 0


def list_jobs(args: argparse.Namespace, client: Client) -> int:
    jobs = client.jobs.list(state=args.state, limit=args.limit)
    if args.json:
        print_json([job.raw for job in jobs])
        return 0
    print_table(["ID", "NAME", "STATE", "PROGRESS", "META-LOSS", "RESULT"],
                [[job.id, job.name, job.state, f"{job.progress.iteration}/{job.progress.total_iterations}",
                  job.progress.meta_loss, job.result.reference if job.result else (job.error or "")[:40] or None]
                 for job in jobs])
    return 0


def show(args: argparse.Namespace, client: Client) -> int:
    job = client.jobs.get(args.job_id)
    if args.json:
        print_json(job.raw)
        return 0
    p = job.progress
    print_table(["FIELD", "VALUE"], [
        ("id", job.id), ("name", job.name), ("state", job.state),
        ("progress", f"{p.iteration}/{p.total_iterations} {p.phase or ''}".strip()),
        ("meta-loss", p.meta_loss), ("eval loss", p.eval_loss), ("elapsed", fmt_seconds(p.elapsed_s)),
        ("result", job.result.reference if job.result else None), ("error", job.error)])
    return 0


def cancel(args: argparse.Namespace, client: Client) -> int:
    job = client.jobs.cancel(args.job_id)
    print(job.state if job.state != "running" else "cancelling: it stops before its next iteration")
    return 0


def watch(args: argparse.Namespace, client: Client) -> int:
    return follow(client, args.job_id)


def follow(client: Client, job_id: str) -> int:
    """Draw a progress bar from the job's event stream; 0 if the job succeeded, else 1."""
    bar: ProgressBar | None = None
    job: Job | None = None
    resumed = None
    for event in client.jobs.events(job_id):
        job, p = event.job, event.job.progress
        if p.resumed_from is not None and p.resumed_from != resumed:
            resumed = p.resumed_from
            print(f"resumed at iteration {resumed}", file=sys.stderr)
        bar = bar or ProgressBar(p.total_iterations)
        losses = " ".join(f"{label} {v:.4g}" for label, v in (("meta-loss", p.meta_loss), ("eval", p.eval_loss))
                          if v is not None)
        bar.update(p.iteration, elapsed=p.elapsed_s, extra=f"{job.state} {p.phase or ''} {losses}")
        if event.event == "end":
            break
    if bar is not None:
        bar.close()
    if job is None:
        raise CliError(f"the event stream for job {job_id} ended without a word")
    if job.state == "succeeded":
        print(f"succeeded: {job.result.reference if job.result else '?'} "
              f"({fmt_seconds(job.progress.elapsed_s)} of meta-training)")
        return 0
    print(f"{job.state}{': ' + job.error if job.error else ''}", file=sys.stderr)
    return 1
