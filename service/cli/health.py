"""`l2o health`: the container health check of the one image, for whichever role the container runs.

    l2o health                     the role of this container's `l2o` command (process 1), as below
    l2o health --role api          GET /healthz on 127.0.0.1:L2O_PORT
    l2o health --role worker       the worker's own heartbeat: a file it touches every few seconds while
                                   it runs and reaches its database (<data_dir>/worker.alive)

Exit status 0 when healthy, 1 when not (what Docker's HEALTHCHECK expects).
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from service.cli.errors import CliError

if TYPE_CHECKING:
    from service.config import Settings

HEARTBEAT_FILE = "worker.alive"
HEARTBEAT_S = 10.0
PROCESS_ONE = Path("/proc/1/cmdline")

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("health", help="container health check: the API's /healthz or the worker's heartbeat",
                       description=__doc__)
    p.add_argument("--role", choices=["auto", "api", "worker"], default="auto",
                   help="what to check; auto reads the command of process 1 (the container's)")
    p.add_argument("--max-age", type=float, default=6 * HEARTBEAT_S, metavar="SECONDS",
                   help="a worker is unhealthy once its heartbeat is older than this")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from service.config import Settings

    settings = Settings()
    role = args.role if args.role != "auto" else role_of(PROCESS_ONE)
    if role == "worker":
        age = heartbeat_age(heartbeat_path(settings.data_dir))
        if age is None or age > args.max_age:
            raise CliError(f"the worker's heartbeat ({heartbeat_path(settings.data_dir)}) is "
                           f"{'missing' if age is None else f'{age:.0f} s old'}")
        print(f"worker healthy: heartbeat {age:.0f} s ago")
        return 0
    url = f"http://127.0.0.1:{settings.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            print(f"api healthy: {url} answered {response.status}")
    except OSError as exc:
        raise CliError(f"{url}: {exc}") from None  # status 1, what Docker reads as unhealthy (2 is reserved)
    return 0


def role_of(cmdline: Path) -> str:
    """`worker` when the command in `cmdline` (NUL-separated, as /proc gives it) is `l2o worker`."""
    try:
        words = [w.decode(errors="replace") for w in cmdline.read_bytes().split(b"\0") if w]
    except OSError:
        return "api"
    after = [w for i, w in enumerate(words) if i > 0 and Path(words[i - 1]).name == "l2o"]
    return "worker" if after[:1] == ["worker"] else "api"


def heartbeat_path(data_dir: Path) -> Path:
    return data_dir / HEARTBEAT_FILE


def heartbeat_age(path: Path) -> float | None:
    try:
        return max(time.time() - path.stat().st_mtime, 0.0)
    except FileNotFoundError:
        return None


@contextmanager
def heartbeat(path: Path, check: Callable[[], None], interval_s: float = HEARTBEAT_S) -> Iterator[None]:
    """While the block runs, touch `path` every `interval_s` seconds that `check()` passes (a worker: its
    database answers); the file is removed when the block ends. A worker that hangs on its database or
    dies stops touching it, and `l2o health` reports it unhealthy."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                check()
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            except Exception as exc:  # the heartbeat only reports: the worker's own code handles the failure
                log.warning("heartbeat skipped: %s", exc)
            if stop.wait(interval_s):
                return

    thread = threading.Thread(target=beat, name="l2o-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval_s)
        path.unlink(missing_ok=True)


@contextmanager
def worker_heartbeat(settings: Settings) -> Iterator[None]:
    """`l2o worker`'s heartbeat: touched while the worker's database answers."""
    from service.registry.db import Database

    db = Database(settings.db_url)
    try:
        with heartbeat(heartbeat_path(settings.data_dir), db.ping):
            yield
    finally:
        db.dispose()
