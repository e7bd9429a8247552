"""`l2o eval`: evaluate a checkpoint against the tuned baselines on held-out instances.

    l2o eval quad                                   a checkpoint folder (l2o train --out) or file
    l2o eval quadratic-lstm@latest                  a registry reference, downloaded from the server
    l2o eval quad --family quadratic --param dim=20 another family than the one it was trained on
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from client import Client, L2OError, NotFoundError
from service.cli.errors import CliError, ExitCode
from service.cli.options import add_family_options, parse_params
from service.lopt import Checkpoint
from service.metatrain import evaluate
from service.tasks import make_family

# A registry reference (service.registry.names): NAME, NAME:VERSION or NAME@ALIAS.
REFERENCE_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}(:[0-9]+|@[a-z][a-z0-9._-]{0,63})?")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint against tuned baselines", description=__doc__)
    p.add_argument("checkpoint", help="a checkpoint folder, a safetensors file, or a registry reference "
                                      "(NAME, NAME:VERSION, NAME@ALIAS) to download from the server")
    add_family_options(p, required=False,
                       family_help="task family: quadratic, mlp, logistic, conv (default: the one it was "
                                   "trained on, with its parameters)")
    p.add_argument("--steps", type=int, default=100, help="optimizee steps per evaluation run")
    p.add_argument("--instances", type=int, default=64, help="held-out instances")
    p.add_argument("--seed", type=int, default=1, help="seed of the held-out instances")
    p.add_argument("--device", default="cpu", help="torch device to evaluate on")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON to this file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, client: Client | None = None) -> int:
    checkpoint = load(args.checkpoint, client)
    if args.family is not None:
        family = make_family(args.family, **parse_params(args.param))
    else:
        trained_on = checkpoint.config.trained_on or {}
        if "family" not in trained_on or args.param:
            raise CliError("give --family (and its --param): the checkpoint does not say what it was trained on"
                           if "family" not in trained_on else "--param needs --family", ExitCode.USAGE)
        family = make_family(trained_on["family"], **trained_on.get("params", {}))
    report = evaluate(checkpoint, family, n_instances=args.instances, steps=args.steps, seed=args.seed,
                      device=args.device)
    print(report.table())
    if args.json:
        args.json.write_text(json.dumps(report.to_dict()) + "\n")
    return 0


def load(where: str, client: Client | None) -> Checkpoint:
    """A checkpoint from a folder or file when `where` names one, else from the registry."""
    path = Path(where)
    if path.exists():
        return Checkpoint.load(path)
    if not REFERENCE_RE.fullmatch(where):
        raise CliError(f"no checkpoint folder or file {where}", ExitCode.NOT_FOUND)
    try:
        own = client or Client()
    except L2OError as exc:
        raise CliError(f"no checkpoint folder or file {where}, and no server to look it up in: {exc}",
                       ExitCode.NOT_FOUND) from None
    try:
        file = own.optimizers.download(where)
    except NotFoundError as exc:
        raise CliError(f"no checkpoint folder or file {where}, nor in the registry: {exc.message}",
                       ExitCode.NOT_FOUND) from None
    finally:
        if client is None:
            own.close()
    return Checkpoint.from_bytes(file.data, expected_sha256=file.sha256)
