"""How `l2o` fails: one line on stderr, no traceback, and an exit status that tells a script what happened.

    0    success
    1    anything else that failed (a refused request, a failed job, a bad checkpoint, ...)
    2    usage: a bad option or argument (argparse's own status)
    3    not found: no such optimizer, version, alias, session, job, file or folder
    4    authentication: no API key, a wrong or revoked one, or one without the needed scope
    5    the server, or for the database commands the database, cannot be reached
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import sys
from enum import IntEnum

import client
from service import errors as domain
from service.registry.db import UNREACHABLE as DATABASE_UNREACHABLE


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2
    NOT_FOUND = 3
    AUTH = 4
    UNREACHABLE = 5
    INTERRUPTED = 130


class CliError(Exception):
    """A problem to print as one line, exiting with `code`."""

    def __init__(self, message: str, code: ExitCode = ExitCode.FAILURE) -> None:
        super().__init__(message)
        self.code = code


def exit_code(exc: BaseException) -> ExitCode:
    if isinstance(exc, CliError):
        return exc.code
    if isinstance(exc, (client.APIConnectionError, *DATABASE_UNREACHABLE)):
        return ExitCode.UNREACHABLE
    if isinstance(exc, client.AuthenticationError | client.PermissionDeniedError):
        return ExitCode.AUTH
    if isinstance(exc, client.NotFoundError | FileNotFoundError):
        return ExitCode.NOT_FOUND
    if isinstance(exc, domain.Unauthorized | domain.Forbidden):
        return ExitCode.AUTH
    if isinstance(exc, domain.NotFound):
        return ExitCode.NOT_FOUND
    return ExitCode.FAILURE


def message(exc: BaseException) -> str:
    if isinstance(exc, client.APIConnectionError):
        return f"cannot reach the l2o server: {exc.message}"
    if isinstance(exc, DATABASE_UNREACHABLE):
        cause = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        return f"cannot reach the database: {cause}"
    if isinstance(exc, client.APIStatusError):
        return f"{exc.message} (HTTP {exc.status_code})"
    if isinstance(exc, domain.L2OError):
        return exc.message
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror or exc}: {exc.filename}"
    return str(exc)


# What a command may fail with and still deserve one line rather than a traceback: the SDK's errors, ours,
# the service's domain errors (a bad family parameter, a checkpoint that does not load), files, a database
# that does not answer.
EXPECTED: tuple[type[BaseException], ...] = (client.L2OError, domain.L2OError, CliError, ValueError, OSError,
                                            *DATABASE_UNREACHABLE)


def report(exc: BaseException) -> int:
    """Print `exc` as one line on stderr and return its exit status."""
    text = " ".join(line.strip() for line in message(exc).splitlines() if line.strip())  # one line, always
    print(f"error: {text}", file=sys.stderr)
    return int(exit_code(exc))
