"""bench.longrun on a few validation problems: every optimizer reported beside both Adams and Adam tuned
as the held-out suite tunes it, on the mixture's validation split (never the held-out suite), with the
ratios computed from the per-problem losses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from bench import longrun
from bench.generalization import ADAM_GRID, record_points, run, torch_optimizer
from service.tasks.mixture import MixtureFamily

GENERAL = Path(__file__).resolve().parents[2] / "service" / "pretrained" / "general-mlp"


def test_a_short_run_reports_each_optimizer_against_both_baselines(tmp_path):
    out = tmp_path / "longrun.json"
    assert longrun.main(["--optimizer", f"general={GENERAL}", "--steps", "20", "--problems", "2",
                         "--instances", "1", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc["summary"]) == {"adam-0.001", "adam-0.003", "adam-tuned", "general"}
    assert [r["problem"] for r in doc["problems"]] == [0, 1]
    for name, s in doc["summary"].items():
        baselines = ((lambda r: min(r["loss"]["adam-0.001"]["20"], r["loss"]["adam-0.003"]["20"]),
                      "geomean_vs_best_adam"), (lambda r: r["loss"]["adam-tuned"]["20"], "geomean_vs_tuned_adam"))
        for baseline, key in baselines:
            logs = [math.log(r["loss"][name]["20"] / baseline(r)) for r in doc["problems"]]
            assert math.isclose(s[key]["20"], math.exp(sum(logs) / len(logs)), rel_tol=1e-9)
        assert 0 <= s["divergences"] <= 2
    assert min(doc["summary"][a]["geomean_vs_best_adam"]["20"] for a in ("adam-0.001", "adam-0.003")) >= 1.0
    assert doc["summary"]["adam-tuned"]["geomean_vs_tuned_adam"]["20"] == 1.0


def test_adam_is_tuned_on_other_instances_of_the_same_problem():
    family = MixtureFamily(max_coords=50_000)
    scored = family.sample(1, longrun.SEED_BASE + 1, "validation")
    tuning = family.sample(1, longrun.SEED_BASE + 1, "validation", instance_seed=longrun.TUNE_INSTANCE_SEED + 1)
    assert tuning.description == scored.description
    assert not torch.equal(tuning.init_params(), scored.init_params())
    points = record_points(20)
    finals = {lr: float(run(tuning, torch_optimizer("adam", [lr]), points)[-1].mean()) for lr in ADAM_GRID}
    assert longrun.tune_adam(family, 1, 1, [20], points) == {20: min(finals, key=finals.get)}


def test_shards_merge_into_the_report_of_one_run(tmp_path):
    common = ["--optimizer", f"general={GENERAL}", "--steps", "20", "--problems", "2", "--instances", "1"]
    whole, a, b, merged = (tmp_path / f"{n}.json" for n in ("whole", "a", "b", "merged"))
    assert longrun.main([*common, "--json", str(whole)]) == 0
    assert longrun.main([*common, "--only", "1", "--json", str(b)]) == 0
    assert longrun.main([*common, "--only", "0", "--json", str(a)]) == 0
    assert longrun.main(["--merge", str(b), str(a), "--json", str(merged)]) == 0
    one, two = json.loads(whole.read_text()), json.loads(merged.read_text())
    assert two["problems"] == one["problems"] and two["summary"] == one["summary"]


def test_a_reused_run_supplies_its_rows_and_only_new_optimizers_run(tmp_path, monkeypatch):
    common = ["--steps", "20", "--problems", "2", "--instances", "1"]
    first, both, later = tmp_path / "first.json", tmp_path / "both.json", tmp_path / "later.json"
    assert longrun.main(["--optimizer", f"general={GENERAL}", *common, "--json", str(first)]) == 0
    assert longrun.main(["--optimizer", f"general={GENERAL}", "--optimizer", f"again={GENERAL}", *common,
                         "--json", str(both)]) == 0
    monkeypatch.setattr(longrun, "adam_row", lambda *a: (_ for _ in ()).throw(AssertionError("Adam ran again")))
    assert longrun.main(["--optimizer", f"general={GENERAL}", "--optimizer", f"again={GENERAL}", *common,
                         "--reuse", str(first), "--json", str(later)]) == 0
    rows = json.loads(later.read_text())["problems"]
    assert rows == json.loads(both.read_text())["problems"]
    assert all(set(r["loss"]) == {"adam-0.001", "adam-0.003", "adam-tuned", "general", "again"} for r in rows)


def test_clean_draws_rerun_the_baselines_of_the_problems_they_change_only(tmp_path, monkeypatch):
    """Validation problem 0 is a teacher problem (clean under --clean 1), problem 1 is on the digits (the same
    draw): a reused standing run supplies problem 1's row, and problem 0's baselines run afresh."""
    common = ["--optimizer", f"general={GENERAL}", "--steps", "20", "--problems", "2", "--instances", "1"]
    standing, clean = tmp_path / "standing.json", tmp_path / "clean.json"
    assert longrun.main([*common, "--json", str(standing)]) == 0
    ran = []
    real = longrun.adam_row
    monkeypatch.setattr(longrun, "adam_row", lambda family, k, *a: ran.append(k) or real(family, k, *a))
    assert longrun.main([*common, "--clean", "1", "--reuse", str(standing), "--json", str(clean)]) == 0
    assert ran == [0]
    before, after = (json.loads(p.read_text())["problems"] for p in (standing, clean))
    assert after[0]["spec"]["clean"] is True and "clean" not in before[0]["spec"]
    assert after[0]["loss"]["adam-tuned"] != before[0]["loss"]["adam-tuned"]
    assert after[1] == before[1]


def test_merging_the_standing_and_clean_files_scores_what_both_hold_by_the_recipe_rule(tmp_path):
    def row(k: int, losses: dict[str, float]) -> dict:
        loss = {name: {t: v * f for t, f in (("100", 4.0), ("1000", 2.0), ("5000", 1.0))} for name, v in losses.items()}
        return {"problem": k, "runs": 2, "loss": loss, "diverged": {name: 0 for name in losses}}

    adams = {"adam-0.001": 2.0, "adam-0.003": 1.5, "adam-tuned": 1.0}
    standing, clean, merged = (tmp_path / f"{n}.json" for n in ("standing", "clean", "merged"))
    standing.write_text(json.dumps({"problems": [row(0, {**adams, "a": 3.0, "b": 9.0}),
                                                 row(1, {**adams, "a": 0.5, "b": 1.0})]}))
    clean.write_text(json.dumps({"problems": [row(0, {**adams, "a": 2.0})]}))
    assert longrun.main(["--merge", str(standing), str(clean), "--json", str(merged)]) == 0
    summary = json.loads(merged.read_text())["summary"]
    assert set(summary) == {*adams, "a"}   # b is not in every problem: not scored
    gm = (3.0 * 0.5 * 2.0) ** (1 / 3)      # the same ratio to tuned Adam at every step
    assert math.isclose(summary["a"]["score"], 2 * math.log(gm), rel_tol=1e-12)
    assert summary["adam-tuned"]["score"] == 0.0
