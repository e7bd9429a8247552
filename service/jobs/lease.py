"""Lease owners: who runs a job, and whether that owner is certainly gone.

A job row names its lease owner as `host/pid/token/scope`. The owner renews the lease with a heartbeat;
anyone may take the job over once the heartbeat is older than the lease (L2O_JOB_LEASE_S). A restarted
process need not wait that long for its own host's dead jobs: when the owner ran in the same process
namespace (same boot, same pid namespace) and its process no longer exists, or it is this process and the
token is no longer running here, the lease is void at once. Across machines or containers only the
heartbeat counts, since a pid there means nothing here.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import threading
from contextlib import suppress
from pathlib import Path

_live: set[str] = set()
_lock = threading.Lock()


def _scope() -> str | None:
    """This boot of this machine and this pid namespace, hashed; None where Linux's /proc is missing."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return hashlib.sha256(f"{boot}|{pidns}".encode()).hexdigest()[:12]


SCOPE = _scope()


def acquire() -> str:
    """A new owner id for one run of one job, live until `release`."""
    host = socket.gethostname()[:48].replace("/", "_")
    owner = f"{host}/{os.getpid()}/{secrets.token_hex(4)}/{SCOPE or '-'}"
    with _lock:
        _live.add(owner)
    return owner


def release(owner: str) -> None:
    with _lock:
        _live.discard(owner)


def pid_of(owner: str | None) -> int | None:
    """The process id in `owner` when that owner ran in this process namespace, else None."""
    parts = (owner or "").split("/")
    if len(parts) != 4 or SCOPE is None or parts[3] != SCOPE or not parts[1].isdigit():
        return None
    return int(parts[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    # A killed child its parent has not reaped yet is a zombie: it exists but will never run again.
    with suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def is_void(owner: str | None) -> bool:
    """True when `owner` certainly no longer runs: its lease can be taken over without waiting."""
    if owner is None:
        return True
    pid = pid_of(owner)
    if pid is None:
        return False
    if pid == os.getpid():
        with _lock:
            return owner not in _live
    return not _pid_alive(pid)
