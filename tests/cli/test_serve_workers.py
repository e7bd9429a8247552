"""`l2o serve --workers N`: every worker process runs with the settings the parent checked, and settings
that cannot run in several processes (the memory session store) are refused with one line and a non-zero
exit, whether N comes from the flag or from L2O_WORKERS."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from service.cli import main
from service.config import Settings
from tests.live_server import REPO


@pytest.fixture
def env(tmp_path, monkeypatch, sqlite_migrated):
    import shutil

    shutil.copyfile(sqlite_migrated, tmp_path / "l2o.db")
    monkeypatch.setenv("L2O_DATABASE_URL", f"sqlite:///{tmp_path / 'l2o.db'}")
    monkeypatch.setenv("L2O_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("L2O_REGISTER_PRETRAINED", "false")
    for name in ("L2O_WORKERS", "L2O_SESSION_STORE", "L2O_HOST", "L2O_PORT"):
        monkeypatch.setenv(name, "")   # recorded, so that what `serve` writes there is undone after the test
        monkeypatch.delenv(name)


@pytest.fixture
def uvicorn_runs(monkeypatch) -> list[dict]:
    """Each uvicorn.run call, with the settings a worker process would build from the environment then."""
    import uvicorn

    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({**kw, "worker_settings": Settings()}))
    return calls


def serve(*args: str, **env: str) -> subprocess.CompletedProcess:
    """`l2o serve` as a real process (its exit status and output are what a user sees); never starts
    listening when the settings are refused."""
    code = "import sys; from service.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, "serve", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


@pytest.mark.parametrize("flag, environment", [(["--workers", "2"], {}), ([], {"L2O_WORKERS": "2"})])
def test_several_workers_on_the_memory_store_are_refused_in_one_line(env, flag, environment):
    done = serve(*flag, **environment)
    assert done.returncode != 0
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "L2O_SESSION_STORE=redis://" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("flag, environment", [(["--workers", "0"], {}), ([], {"L2O_WORKERS": "x"})])
def test_a_worker_count_that_is_not_one_or_more_is_refused_in_one_line(env, flag, environment):
    done = serve(*flag, **environment)
    assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "workers" in done.stderr and "Traceback" not in done.stderr


def test_every_worker_process_gets_the_flags_settings(env, monkeypatch, uvicorn_runs):
    monkeypatch.setenv("L2O_SESSION_STORE", "redis://127.0.0.1:6379/0")
    assert main(["serve", "--workers", "3", "--port", "8765"]) == 0
    (call,) = uvicorn_runs
    assert call["workers"] == 3 and call["port"] == 8765
    # What each worker builds from the environment agrees with the parent: the guard in the app sees 3.
    assert (call["worker_settings"].workers, call["worker_settings"].port) == (3, 8765)


def test_one_worker_on_the_memory_store_still_serves(env, uvicorn_runs):
    assert main(["serve", "--workers", "1"]) == 0
    assert len(uvicorn_runs) == 1
