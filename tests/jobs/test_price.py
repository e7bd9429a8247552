"""Every job spec is priced before it is paid for: an estimate of memory and compute from the spec, refused
with a 422 naming the part of the spec and the limit when over the configured limits."""

from __future__ import annotations

import pytest

from service.config import Settings
from service.jobs import price
from service.jobs.spec import JobSpec
from service.tasks import FAMILIES, Footprint, make_family
from tests.jobs.conftest import tiny_spec
from tests.record import record

# The attack of issue 20: it grew the API process to 22 GB until the kernel killed it.
ATTACK = {"name": "attack", "family": {"name": "mlp", "params": {"hidden_sizes": [256, 256], "batch_size": 512}},
          "training": {"iterations": 1000, "instances": 64}}
# Specs asking for 64 GiB and more: 8 × 4096 hidden units, 65,536 instances.
HUGE = {"name": "huge", "family": {"name": "mlp", "params": {"hidden_sizes": [4096] * 8}},
        "training": {"instances": 65_536}}
DEFAULTS = price.JobLimits.from_settings(Settings())


@pytest.mark.parametrize("spec", [ATTACK, HUGE], ids=["attack", "huge"])
def test_oversized_specs_are_refused_over_http_naming_field_and_limit(client, train_headers, spec):
    response = client.post("/v1/jobs", json=spec, headers=train_headers)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert "body.training:" in error["message"] and "L2O_JOB_MAX_MEMORY_BYTES" in error["message"]
    assert "training.instances" in error["message"]
    assert error["detail"]["field"] == "training"
    assert error["detail"]["estimate_bytes"] > error["detail"]["limit_bytes"] == 4 * 1024**3
    assert client.get("/v1/jobs", headers=train_headers).json() == []  # nothing was created
    record("jobs:priced", spec=spec["name"], status=response.status_code,
           estimate_bytes=error["detail"]["estimate_bytes"], limit_bytes=error["detail"]["limit_bytes"])


@pytest.mark.parametrize("spec", [
    {"name": "paper-quadratic"},
    {"name": "paper-mlp", "family": {"name": "mlp"}},
    {"name": "paper-conv", "family": {"name": "conv"}},
    tiny_spec("tiny"),
])
def test_the_papers_jobs_fit_the_default_limits(spec):
    checked = price.check(JobSpec.model_validate(spec), DEFAULTS)
    assert 0 < checked.memory_bytes <= DEFAULTS.max_memory_bytes and 0 < checked.flops <= DEFAULTS.max_flops


def test_compute_over_the_limit_names_the_phase_and_the_setting():
    long_eval = JobSpec.model_validate(tiny_spec("evals", evaluation={"steps": 100_000, "instances": 65_536}))
    with pytest.raises(price.ValidationError) as info:
        price.check(long_eval, price.JobLimits(max_memory_bytes=0, max_flops=1e12))
    assert "body.evaluation:" in info.value.message and "L2O_JOB_MAX_FLOPS" in info.value.message
    assert info.value.detail["estimate_flops"] > 1e12
    # 0 turns each check off.
    assert price.check(long_eval, price.JobLimits(0, 0)).flops > 1e12


def test_the_estimate_grows_with_what_the_job_holds():
    base = price.estimate(JobSpec.model_validate(tiny_spec("a")))
    for section, change in [("training", {"instances": 20}), ("training", {"unroll": 10, "horizon": 10}),
                            ("optimizer", {"hidden_size": 40}),
                            ("family", {"name": "quadratic", "params": {"dim": 30}})]:
        bigger = price.estimate(JobSpec.model_validate(tiny_spec("a", **{section: change})))
        assert bigger.training_bytes > base.training_bytes, (section, change)
        if section != "training" or "unroll" not in change:  # a longer unroll keeps more, computes the same
            assert bigger.flops > base.flops, (section, change)
    more = price.estimate(JobSpec.model_validate(tiny_spec("a", training={"iterations": 60})))
    assert more.training_flops == pytest.approx(10 * base.training_flops, rel=0.2)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_prices_its_own_size(name):
    family = make_family(name)
    fp = price.footprint(family)
    if fp.max_batch_params is None:
        assert fp.params == family.sample(1, 0).dim  # the estimate counts the coordinates the run will have
    else:  # a family of varied problems prices its largest; no batch it draws holds more than the bound
        dims = [family.sample(4, seed).dim for seed in range(6)]
        assert all(d <= fp.params and 4 * d <= fp.max_batch_params for d in dims)
    assert min(fp.params, fp.flops, fp.eval_flops) > 0 and min(fp.data, fp.activations) >= 0


def test_a_family_without_a_footprint_is_measured_on_one_instance():
    class Bare:
        name = "bare"

        def sample(self, n_instances, seed, split="train", device="cpu"):
            return make_family("quadratic", dim=7).sample(n_instances, seed, split, device)

    fp = price.footprint(Bare())
    assert isinstance(fp, Footprint) and fp.params == 7
