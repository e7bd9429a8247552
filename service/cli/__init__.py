"""The `l2o` command. Each subcommand lives in its own module with a `register(subparsers)`.

Failures print one line and exit with a status that says what kind they were (service.cli.errors).
"""

from __future__ import annotations

import argparse
import importlib
import sys

import service
from service.cli.errors import EXPECTED, ExitCode, report

# Modules under service.cli, each adding one subcommand (or group) to the parser.
COMMANDS = ["train", "eval", "demo", "serve", "db", "keys", "optimizers", "sessions", "jobs", "worker", "health"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (they are docstrings), and each option's default after its help, where it
    has one worth showing (not None, not an off switch's False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """Every parser of the command, subcommands' too (add_subparsers makes them of this class), formats its
    help with HelpFormatter."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["formatter_class"] = HelpFormatter
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="l2o", description="Learned optimizers as a service.\n\n"
                                            "Exit status: 0 success, 1 failure, 2 usage, 3 not found, "
                                            "4 authentication, 5 server unreachable, 130 interrupted.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {service.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"service.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"service.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except EXPECTED as exc:
        return report(exc)


if __name__ == "__main__":
    sys.exit(main())
