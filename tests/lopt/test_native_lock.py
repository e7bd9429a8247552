"""A build killed midway must not make every later start wait forever on cpp_extension's lock file."""

from __future__ import annotations

import multiprocessing

from service.lopt.native import _builder_flock


def _hold(build_dir, entered, release):
    with _builder_flock(build_dir):
        entered.set()
        release.wait(10)


def test_a_stale_lock_file_is_removed_by_the_one_live_builder(tmp_path):
    (tmp_path / "lock").write_text("")   # what a killed build leaves behind
    with _builder_flock(tmp_path):
        assert not (tmp_path / "lock").exists()


def test_builders_take_turns_and_a_dead_holder_frees_the_lock(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    entered, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(tmp_path, entered, release))
    holder.start()
    assert entered.wait(30)
    (tmp_path / "lock").write_text("")   # the holder's build is in progress: its lock file must stay
    second_entered, second_release = ctx.Event(), ctx.Event()
    second = ctx.Process(target=_hold, args=(tmp_path, second_entered, second_release))
    second.start()
    assert not second_entered.wait(1.0)   # waits while the first builder lives
    assert (tmp_path / "lock").exists()
    holder.kill()                          # killed mid-build: the kernel drops its flock
    holder.join(10)
    assert second_entered.wait(30)
    assert not (tmp_path / "lock").exists()
    second_release.set()
    second.join(10)
    assert second.exitcode == 0
