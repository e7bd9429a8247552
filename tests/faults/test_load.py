"""bench/load.py in small: concurrent clients whose transports lose answers on purpose; every step is
applied exactly once (the full 64 x 200 run is bench/reliability.py's)."""

from __future__ import annotations

import pytest

from bench import load

pytestmark = pytest.mark.slow  # a real server process and ~200 steps: ~10 s


def test_lost_answers_under_concurrency_are_replayed_not_reapplied(tmp_path):
    result = load.main(["--clients", "6", "--steps", "20", "--drop", "0.2", "--timeout", "120",
                        "--json", str(tmp_path / "load.json")])
    assert result["ok"] and result["errors"] == [] and result["mismatches"] == []
    assert result["steps_applied"] == 120 and result["answers_dropped"] > 5
