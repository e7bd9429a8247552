"""Commands that speak to an l2o server, through the SDK.

The server is L2O_URL (default http://127.0.0.1:8000). The key is L2O_API_KEY, else the key file the
embedded server writes on first start (<data_dir>/admin.key): the SDK's `Client()` finds both.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from client import Client, L2OError
from service.cli.errors import EXPECTED, CliError, ExitCode, report

Command = Callable[[argparse.Namespace, Client], int]


def with_client(command: Command) -> Callable[..., int]:
    """Wrap a command taking (args, client) into one taking args (and, for tests, a client), turning every
    expected failure into one line and its exit status."""

    def run(args: argparse.Namespace, client: Client | None = None) -> int:
        try:
            if client is not None:
                return command(args, client)
            try:
                own = Client()
            except L2OError as exc:  # no API key anywhere it looks
                raise CliError(str(exc), ExitCode.AUTH) from None
            with own:
                return command(args, own)
        except EXPECTED as exc:
            return report(exc)

    return run
