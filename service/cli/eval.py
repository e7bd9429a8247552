"""`l2o eval`: evaluate a checkpoint against the tuned baselines on held-out instances."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from service.cli.options import add_family_options, parse_params
from service.lopt import Checkpoint
from service.metatrain import evaluate
from service.tasks import make_family


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint against tuned baselines", description=__doc__)
    p.add_argument("checkpoint", type=Path, help="checkpoint folder (or weights.safetensors)")
    add_family_options(p)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--instances", type=int, default=64)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    checkpoint = Checkpoint.load(args.checkpoint)
    family = make_family(args.family, **parse_params(args.param))
    report = evaluate(checkpoint, family, n_instances=args.instances, steps=args.steps, seed=args.seed,
                      device=args.device)
    print(report.table())
    if args.json:
        args.json.write_text(json.dumps(report.to_dict()) + "\n")
    return 0
