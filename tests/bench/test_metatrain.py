"""bench.metatrain times the three loops on the same instances and derives the two gains from them."""

from __future__ import annotations

import pytest

from bench import metatrain
from service.lopt import OptimizerConfig
from service.tasks import make_family

TINY = metatrain.Recipe("tiny", OptimizerConfig(hidden_size=4), "quadratic", {"dim": 3}, instances=4, horizon=10,
                        unroll=5)


def test_each_loop_is_timed_and_the_gains_are_their_ratios():
    row = metatrain.measure(TINY, repeats=2, single_cap=2)
    for name in ("fast_batched", "straightforward_batched", "fast_one_at_a_time"):
        assert len(row[name + "_runs"]) == 2 and row[name] > 0
    assert row["code_gain"] == pytest.approx(row["fast_batched"] / row["straightforward_batched"])
    assert row["batching_gain"] == pytest.approx(row["fast_batched"] / row["fast_one_at_a_time"])
    assert row["coordinates"] == 4 * 3


def test_a_run_unrolls_each_batch_over_the_horizon_from_its_start():
    family = make_family("quadratic", dim=3)
    batches = [family.sample(2, 7, "train"), family.sample(2, 8, "train")]
    seen = []

    def unroll(net, batch, traj, n):
        seen.append((id(batch), traj.step))
        return metatrain.fast_unroll(net, batch, traj, n)

    assert metatrain.steps_per_s(TINY, unroll, batches) > 0
    # Two unrolls of 5 steps per batch, each batch from step 0.
    assert seen == [(id(batches[0]), 0), (id(batches[0]), 5), (id(batches[1]), 0), (id(batches[1]), 5)]


def test_every_shipped_recipe_is_listed():
    names = [r.name for r in metatrain.RECIPES]
    assert names == ["quadratic, LSTM", "digits MLP, LSTM", "mixture, feature MLP"]
    assert {r.config.architecture for r in metatrain.RECIPES} == {"lstm", "feature_mlp"}
