"""Command-line options shared by `l2o train`, `l2o eval` and `l2o jobs submit`."""

from __future__ import annotations

import argparse
import json
from typing import Any


def parse_params(pairs: list[str] | None) -> dict[str, Any]:
    """`key=value` pairs; values are read as JSON when they parse (numbers, lists), else as strings."""
    params: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"expected key=value, got {pair!r}")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


def add_family_options(parser: argparse.ArgumentParser, *, required: bool = True,
                       family_help: str = "task family: quadratic, mlp, logistic, conv") -> None:
    parser.add_argument("--family", required=required, help=family_help)
    parser.add_argument("--param", action="append", metavar="KEY=VALUE",
                        help="a family parameter, e.g. --param hidden_sizes=[40] --param activation=relu")
