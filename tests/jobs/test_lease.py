"""Lease owners: only an owner that is certainly gone gives its lease up before the heartbeat lapses."""

from __future__ import annotations

import os
import subprocess
import sys

from service.jobs import lease
from tests.jobs.conftest import wait_for


def test_a_live_owner_keeps_its_lease_and_a_released_one_does_not():
    owner = lease.acquire()
    assert owner.split("/")[1] == str(os.getpid())
    assert not lease.is_void(owner)
    lease.release(owner)
    assert lease.is_void(owner)  # this process, but no longer running that job


def test_an_owner_whose_process_died_is_void():
    # A process that lives until the test kills it (the 60 s only bound it should the test die first).
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    *_, token, scope = lease.acquire().split("/")
    owner = f"host/{child.pid}/{token}/{scope}"
    assert not lease.is_void(owner)
    child.kill()
    # Killed but not reaped yet: a zombie, which is gone too (the signal takes a moment to land).
    wait_for(lambda: lease.is_void(owner), timeout=10, what="the killed child to be seen as gone")
    child.wait()
    assert lease.is_void(owner)


def test_owners_elsewhere_count_only_by_heartbeat():
    assert not lease.is_void(f"other/{os.getpid()}/00000000/another-scope")
    assert not lease.is_void("garbage")
    assert lease.is_void(None)
