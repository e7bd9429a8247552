"""The job spec: its defaults are the core's (the paper's), and it refuses what the run would refuse."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from service.jobs.spec import JobSpec
from service.lopt import OptimizerConfig
from service.metatrain import BASELINES, MetaTrainSettings
from service.metatrain.baselines import LR_GRID


def test_defaults_are_the_papers():
    spec = JobSpec(name="paper")
    assert spec.family.name == "quadratic" and spec.family.params == {"dim": 10, "init_std": 0.01}
    paper = OptimizerConfig()
    assert spec.optimizer.model_dump() == {f: getattr(paper, f) for f in spec.optimizer.model_dump()}
    assert (spec.optimizer.hidden_size, spec.optimizer.num_layers, spec.optimizer.output_scale) == (20, 2, 0.1)
    settings = spec.training.settings("cpu")
    assert settings == MetaTrainSettings()
    assert (settings.horizon, settings.unroll, settings.meta_lr) == (100, 20, 1e-3)
    assert spec.evaluation.baselines == list(BASELINES) and spec.evaluation.lr_grid == sorted(LR_GRID)
    assert spec.eval_steps == 100 and spec.eval_seed == 1


def test_the_checkpoint_config_records_what_it_was_trained_on():
    spec = JobSpec(name="p", family={"name": "mlp", "params": {"hidden_sizes": [8]}}, training={"iterations": 7})
    config = spec.optimizer_config()
    assert config.trained_on["family"] == "mlp"
    assert config.trained_on["params"] == {"hidden_sizes": [8], "activation": "sigmoid", "batch_size": 128}
    # eval_seed and problems_per_iteration only when set: a run without them records the settings runs
    # recorded before they existed
    trained = {f.name for f in dataclasses.fields(MetaTrainSettings)} - {"device", "eval_seed",
                                                                        "problems_per_iteration"}
    assert set(config.trained_on["settings"]) == trained and config.trained_on["settings"]["iterations"] == 7
    seeded = spec.model_copy(update={"training": spec.training.model_copy(update={"eval_seed": 3})})
    assert seeded.optimizer_config().trained_on["settings"]["eval_seed"] == 3
    several = spec.model_copy(update={"training": spec.training.model_copy(update={"problems_per_iteration": 4})})
    assert several.optimizer_config().trained_on["settings"]["problems_per_iteration"] == 4
    with pytest.raises(ValidationError, match="training.problems_per_iteration"):
        JobSpec(name="p", training={"problems_per_iteration": 0})
    with pytest.raises(ValidationError, match="training.eval_seed"):
        JobSpec(name="p", training={"eval_seed": -1})


def test_a_stored_spec_reads_back_the_same():
    spec = JobSpec(name="p", evaluation={"lr_grid": [0.1, 0.01, 0.1], "baselines": ["adam", "adam", "sgd"]})
    assert spec.evaluation.lr_grid == [0.01, 0.1] and spec.evaluation.baselines == ["adam", "sgd"]
    assert JobSpec.model_validate(spec.model_dump(mode="json")) == spec


@pytest.mark.parametrize(("spec", "loc"), [
    ({"name": "p", "family": {"name": "conv", "params": {"channels": 999}}}, ("family", "params")),
    ({"name": "p", "training": {"unroll": 30}}, ("training",)),
    ({"name": "p", "evaluation": {"steps": 0}}, ("evaluation", "steps")),
    ({"name": "p", "optimizer": {"hidden_size": 0}}, ("optimizer", "hidden_size")),
    ({"name": "p", "optimizer": {"architecture": "transformer"}}, ("optimizer", "architecture")),
    ({"name": "p", "training": {"meta_loss": "mse"}}, ("training", "meta_loss")),
    ({"name": "p", "optimizer": {"warmup": "soon", "architecture": "feature_mlp"}}, ("optimizer", "warmup")),
    ({"name": "p", "optimizer": {"warmup": True}}, ("optimizer",)),
    ({"name": "p", "optimizer": {"step_memory": "maybe", "architecture": "feature_mlp"}}, ("optimizer", "step_memory")),
    ({"name": "p", "optimizer": {"step_memory": True}}, ("optimizer",)),
    ({"name": "p", "optimizer": {"relative_correction": True}}, ("optimizer",)),
    ({"name": "p", "optimizer": {"correction_warmup": True}}, ("optimizer",)),
    ({"name": "p", "optimizer": {"memory_up_only": True, "architecture": "feature_mlp"}}, ("optimizer",)),
    ({"name": "p", "optimizer": {"correction_warmup": 2, "architecture": "feature_mlp"}},
     ("optimizer", "correction_warmup")),
])
def test_refused_specs_point_at_the_field(spec, loc):
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(spec)
    assert [e["loc"] for e in info.value.errors()] == [loc]


def test_the_feature_mlps_options_reach_the_checkpoints_config():
    spec = JobSpec.model_validate({"name": "p", "optimizer": {"architecture": "feature_mlp", "step_memory": True,
                                                               "relative_correction": True,
                                                               "correction_warmup": True,
                                                               "memory_up_only": True}})
    config = spec.optimizer.config(trained_on={})
    assert config.step_memory is True and config.relative_correction is True and config.state_shape(3) == (3, 9)
    assert config.correction_warmup is True and config.memory_up_only is True
    assert JobSpec.model_validate({"name": "p"}).optimizer.config(trained_on={}).step_memory is None
