from pathlib import Path

from bench.paper import default_outputs


def test_a_load_run_writes_beside_the_full_runs_files_not_over_them():
    assert default_outputs(False) == (Path("bench/results/paper.json"), Path("bench/results/paper.png"))
    assert default_outputs(True) == (Path("bench/results/paper-load.json"), Path("bench/results/paper-load.png"))
