"""`l2o serve` has glibc keep freed step buffers (4 MB a step at 1M coordinates) for the next step instead of
handing them back to the OS (bench.step's training loop reports the server's page faults per remote step)."""

from __future__ import annotations

import ctypes

from service.cli import serve


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 1


def tuned(monkeypatch, workers: int) -> list[tuple[int, int]]:
    libc = FakeLibc()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: libc)
    serve.keep_freed_buffers(workers)
    return libc.calls


def test_both_thresholds_are_raised_and_workers_inherit_them(monkeypatch):
    assert tuned(monkeypatch, workers=1) == [(serve.M_MMAP_THRESHOLD, 64 << 20), (serve.M_TRIM_THRESHOLD, 128 << 20)]
    assert "MALLOC_MMAP_THRESHOLD_" not in serve.os.environ   # one process: nothing to hand on
    tuned(monkeypatch, workers=2)
    assert serve.os.environ["MALLOC_MMAP_THRESHOLD_"] == str(64 << 20)
    assert serve.os.environ["MALLOC_TRIM_THRESHOLD_"] == str(128 << 20)


def test_an_operators_own_malloc_settings_are_left_as_they_are(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert tuned(monkeypatch, workers=2) == [(serve.M_TRIM_THRESHOLD, 128 << 20)]
    assert serve.os.environ["MALLOC_MMAP_THRESHOLD_"] == "131072"


def test_without_glibc_nothing_is_done(monkeypatch):
    def missing(name):
        raise OSError(name)

    monkeypatch.setattr(ctypes, "CDLL", missing)
    serve.keep_freed_buffers(2)
    assert "MALLOC_TRIM_THRESHOLD_" not in serve.os.environ
