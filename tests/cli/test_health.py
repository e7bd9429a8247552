"""`l2o health`, the image's health check: the API's /healthz, or the heartbeat a worker writes itself."""

from __future__ import annotations

import os
import threading
import time

import pytest

import service.jobs.worker
from service.cli import main
from service.cli.health import heartbeat, heartbeat_path, role_of
from tests.live_server import ServerThread


def test_the_role_is_read_from_the_containers_command(tmp_path):
    cmdline = tmp_path / "cmdline"
    for words, role in [(["/opt/venv/bin/python", "/opt/venv/bin/l2o", "worker"], "worker"),
                        (["l2o", "worker", "--concurrency", "2"], "worker"),
                        (["l2o", "serve", "--host", "0.0.0.0"], "api"),
                        (["python", "-m", "worker"], "api")]:
        cmdline.write_bytes(b"\0".join(w.encode() for w in words) + b"\0")
        assert role_of(cmdline) == role, words
    assert role_of(tmp_path / "missing") == "api"


def test_the_heartbeat_beats_while_its_check_passes_and_is_removed_after(tmp_path):
    path = tmp_path / "data" / "worker.alive"
    ok = threading.Event()
    ok.set()
    checked = threading.Condition()
    calls = 0

    def check() -> None:
        nonlocal calls
        with checked:
            calls += 1
            checked.notify_all()
        if not ok.is_set():
            raise ConnectionError("database down")

    def checks_begun(after: int) -> None:
        """Wait until the beat loop has begun a check past `after`: every beat before that one is done."""
        with checked:
            assert checked.wait_for(lambda: calls > after, timeout=10), "the heartbeat stopped checking"

    def age() -> float:
        return time.time() - path.stat().st_mtime

    with heartbeat(path, check, interval_s=0.01):
        checks_begun(1)   # the first beat (a passing check, then the touch) is done
        assert path.exists()
        ok.clear()
        checks_begun(calls)   # a check that fails has begun: any touch of a passing one is done
        os.utime(path, (time.time() - 100, time.time() - 100))
        checks_begun(calls + 1)   # two beats whose checks failed, the first of them done
        assert age() > 50  # a failing check stops the beats
        ok.set()
        checks_begun(calls + 1)   # a beat whose check passed is done
        assert age() < 5
    assert not path.exists()


def test_worker_health_reads_the_heartbeat(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("L2O_DATA_DIR", str(tmp_path))
    assert main(["health", "--role", "worker"]) == 1
    assert "is missing" in capsys.readouterr().err
    path = heartbeat_path(tmp_path)
    path.touch()
    assert main(["health", "--role", "worker"]) == 0
    os.utime(path, (time.time() - 120, time.time() - 120))
    assert main(["health", "--role", "worker", "--max-age", "60"]) == 1
    assert "120 s old" in capsys.readouterr().err


def test_l2o_worker_writes_its_heartbeat_while_it_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("L2O_DATABASE_URL", raising=False)
    monkeypatch.setenv("L2O_DATA_DIR", str(tmp_path))
    seen = []

    def run_worker(settings, **kwargs):
        for _ in range(100):
            if heartbeat_path(tmp_path).exists():
                break
            time.sleep(0.02)
        seen.append(heartbeat_path(tmp_path).exists())

    monkeypatch.setattr(service.jobs.worker, "run_worker", run_worker)
    assert main(["worker", "--burst"]) == 0
    assert seen == [True] and not heartbeat_path(tmp_path).exists()


def test_api_health_is_unhealthy_without_a_server(monkeypatch, capsys):
    monkeypatch.setenv("L2O_PORT", "9")  # the discard port: nothing listens
    assert main(["health", "--role", "api"]) == 1
    assert "127.0.0.1:9/healthz" in capsys.readouterr().err


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_api_health_against_a_running_server(app, monkeypatch, capsys):
    with ServerThread(app) as url:
        monkeypatch.setenv("L2O_PORT", url.rsplit(":", 1)[1])
        assert main(["health", "--role", "api"]) == 0
    assert "api healthy" in capsys.readouterr().out
