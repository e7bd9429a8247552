"""bench.trace: the effective learning rate it reads off a feature-MLP rule's state."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bench import trace
from service.lopt import Checkpoint, OptimizerConfig
from service.lopt import feature_mlp as fm
from service.tasks.mixture import MixtureFamily

GENERAL = Path(__file__).resolve().parents[2] / "service" / "pretrained" / "general-mlp"


def zero_head(**flags) -> Checkpoint:
    """A rule whose output layer is zero: Adam at its base step, whatever the flags."""
    cfg = OptimizerConfig(architecture="feature_mlp", hidden_size=8, num_layers=2, output_scale=0.004, **flags)
    memory = bool(flags.get("step_memory"))
    return Checkpoint(cfg, fm.init_weights(8, 2, torch.Generator().manual_seed(0), memory=memory))


@pytest.mark.parametrize("flags", [{}, {"warmup": True, "relative_correction": True, "step_memory": True}])
def test_a_rule_that_is_adam_has_its_base_step_as_effective_learning_rate(flags):
    batch = MixtureFamily(max_coords=50_000).sample(1, 10_001, "validation")
    rows = trace.trace(zero_head(**flags), batch, [0, 5, 30])
    assert [r["step"] for r in rows] == [0, 5, 30]
    for row in rows[1:]:
        assert math.isclose(row["lr_median"], 0.004, rel_tol=1e-4)
        assert math.isclose(row["lr_p90"], 0.004, rel_tol=1e-4)
        assert row.get("memory_median", 0.0) == 0.0
    assert rows[2]["loss"] < rows[0]["loss"]


def test_the_effective_learning_rate_scales_with_the_update():
    hc = torch.zeros(4, fm.N_STATE)
    hc[:, 1] = torch.tensor([0.5, -0.2, 1e-6, 0.3])   # m_0.9
    hc[:, 3] = 1.0                                     # sqrt(v)
    hc[:, 4:8] = 1.0                                   # bias accumulators filled
    updates = torch.tensor([0.05, 0.002, 1.0, -0.03])
    out = trace.effective_lr(updates, hc)
    # The third coordinate's Adam direction is under the floor and is left out.
    assert math.isclose(out["lr_median"], 0.1, rel_tol=1e-6)
    assert "memory_median" not in out


def test_the_command_reports_tuned_adam_beside_the_trace(tmp_path):
    out = tmp_path / "trace.json"
    assert trace.main(["--optimizer", str(GENERAL), "--problem", "1", "--steps", "20", "--instances", "1",
                       "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    (problem,) = doc["problems"]
    assert problem["problem"] == 1 and [r["step"] for r in problem["rows"]] == [0, 10, 20]
    for row in problem["rows"][1:]:
        assert row["tuned_adam_lr"] in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
        assert row["lr_median"] > 0 and math.isfinite(row["lr_median"])
        assert -fm.MEMORY_RANGE <= row["memory_median"] <= fm.MEMORY_RANGE


def test_an_lstm_checkpoint_is_refused_by_name():
    lstm = Checkpoint.load(GENERAL.parent / "quadratic-lstm")
    batch = MixtureFamily(max_coords=50_000).sample(1, 10_001, "validation")
    with pytest.raises(SystemExit, match="feature_mlp"):
        trace.trace(lstm, batch, [0, 1])
