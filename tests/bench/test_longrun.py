"""bench.longrun on one validation problem: every optimizer reported beside both Adams, on the mixture's
validation split (never the held-out suite), with the ratios computed from the per-problem losses."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench import longrun

GENERAL = Path(__file__).resolve().parents[2] / "service" / "pretrained" / "general-mlp"


def test_a_short_run_reports_each_optimizer_against_the_better_adam(tmp_path):
    out = tmp_path / "longrun.json"
    assert longrun.main(["--optimizer", f"general={GENERAL}", "--steps", "20", "--problems", "2",
                         "--instances", "1", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc["summary"]) == {"adam-0.001", "adam-0.003", "general"}
    assert [r["problem"] for r in doc["problems"]] == [0, 1]
    for name, s in doc["summary"].items():
        logs = [math.log(r["loss"][name]["20"] / min(r["loss"]["adam-0.001"]["20"], r["loss"]["adam-0.003"]["20"]))
                for r in doc["problems"]]
        assert math.isclose(s["geomean_vs_best_adam"]["20"], math.exp(sum(logs) / len(logs)), rel_tol=1e-9)
        assert 0 <= s["divergences"] <= 2
    assert min(doc["summary"][a]["geomean_vs_best_adam"]["20"] for a in ("adam-0.001", "adam-0.003")) >= 1.0
