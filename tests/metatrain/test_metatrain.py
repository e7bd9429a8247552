import pytest
import torch

from service.lopt import CoordinatewiseLSTM, OptimizerConfig, init
from service.metatrain import MetaTrainingStopped, MetaTrainSettings, meta_train, tune
from service.metatrain.naive import naive_unroll
from service.metatrain.unroll import Trajectory, optimizee_gradient, run_unroll
from service.tasks import make_family

TINY = dict(iterations=6, horizon=20, unroll=5, instances=16, eval_every=3, eval_instances=8, meta_lr=1e-2)


def test_short_meta_training_lowers_meta_loss_and_moves_every_weight():
    family = make_family("quadratic")
    config = OptimizerConfig()
    settings = MetaTrainSettings(**{**TINY, "iterations": 30})
    initial = CoordinatewiseLSTM(config, generator=torch.Generator().manual_seed(settings.seed)).weights()
    initial = {k: v.detach().clone() for k, v in initial.items()}
    result = meta_train(family, config, settings)
    losses = [h["meta_loss"] for h in result.history]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    # Compare the last weights through a resumed run of zero extra iterations.
    final = {}
    meta_train(family, config, settings, on_resume_checkpoint=lambda r: final.update(r.weights))
    for name, w in initial.items():
        assert not torch.equal(final[name], w), f"weight {name} never changed"


def test_same_seed_same_weights_and_resume_matches_uninterrupted():
    family = make_family("quadratic")
    config = OptimizerConfig()
    settings = MetaTrainSettings(**{**TINY, "resume_every": 3})
    a = meta_train(family, config, settings)
    b = meta_train(family, config, settings)
    assert a.checkpoint.digest == b.checkpoint.digest
    saved = []
    meta_train(family, config, settings, on_resume_checkpoint=saved.append)
    assert [r.iteration for r in saved] == [3, 6]
    resumed = meta_train(family, config, settings, resume=type(saved[0]).from_bytes(saved[0].to_bytes()))
    assert resumed.checkpoint.digest == a.checkpoint.digest
    assert [h["iteration"] for h in resumed.history] == list(range(1, 7))


def test_no_second_derivatives_flow_into_the_optimizee_gradient():
    batch = make_family("quadratic").sample(4, seed=0)
    net = CoordinatewiseLSTM(OptimizerConfig())
    theta = batch.init_params()
    # θ that depends on φ, as inside an unroll
    meta_loss, traj = run_unroll(net.config, net.weights(), batch,
                                 Trajectory(theta, init(net.config, theta.numel()), 0), 2)
    assert traj.theta.requires_grad
    loss, grad = optimizee_gradient(batch, traj.theta, 2)
    assert loss.requires_grad  # the loss stays in the meta-graph
    assert not grad.requires_grad and grad.grad_fn is None  # the gradient does not
    # and it is a fresh tensor: a later gradient computation leaves it untouched
    before = grad.clone()
    optimizee_gradient(batch, traj.theta, 3)
    assert torch.equal(grad, before)


@pytest.mark.parametrize("config", [
    OptimizerConfig(hidden_size=6),
    OptimizerConfig(architecture="feature_mlp", hidden_size=6, num_layers=1, output_scale=0.01),
], ids=["lstm", "feature_mlp"])
@pytest.mark.parametrize("instances", [1, 3])
def test_meta_gradient_equals_the_straightforward_implementation(config, instances):
    """Taking ∂f/∂θ with autograd.grad gives the same meta-gradient as a per-step backward through the graph,
    for either architecture, on one instance or a batch (bench.metatrain times the two on the same batch)."""
    batch = make_family("quadratic", dim=4).sample(instances, seed=1)
    grads = []
    for unroll_fn in ("fast", "naive"):
        net = CoordinatewiseLSTM(config, generator=torch.Generator().manual_seed(0))
        theta = batch.init_params()
        traj = Trajectory(theta, init(config, theta.numel()), 0)
        if unroll_fn == "fast":
            meta_loss, _ = run_unroll(config, net.weights(), batch, traj, 5)
        else:
            meta_loss, _ = naive_unroll(net, batch, traj, 5)
        net.zero_grad()
        meta_loss.backward()
        grads.append({k: v.grad.clone() for k, v in net.params.items()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)
    assert any(float(g.abs().sum()) > 0 for g in grads[0].values())


def test_cancel_stops_the_loop():
    calls = iter([False, False, True])
    with pytest.raises(MetaTrainingStopped):
        meta_train(make_family("quadratic"), OptimizerConfig(), MetaTrainSettings(**TINY),
                   should_stop=lambda: next(calls))


class RecordingFamily:
    """Wraps a family and records which splits were sampled."""

    def __init__(self, inner):
        self.inner, self.name, self.splits = inner, inner.name, []

    def params(self):
        return self.inner.params()

    def sample(self, n, seed, split="train", device="cpu"):
        self.splits.append(split)
        return self.inner.sample(n, seed, split, device)


def test_baselines_tune_on_training_instances_only():
    family = RecordingFamily(make_family("quadratic"))
    tuned = tune("adam", family, steps=20, n_instances=4, seed=0, grid=(1e-3, 1e-1, 1.0))
    assert set(family.splits) == {"train"}
    assert tuned.lr in (1e-3, 1e-1, 1.0)
    # the chosen rate is the best of the grid on those instances
    others = [tune("adam", make_family("quadratic"), steps=20, n_instances=4, seed=0, grid=(lr,)).score
              for lr in (1e-3, 1e-1, 1.0)]
    assert tuned.score == min(others)


def test_cosine_meta_lr_schedule_decays_from_meta_lr_and_resumes_on_schedule():
    constant = MetaTrainSettings(**TINY)
    assert [constant.meta_lr_at(i) for i in range(6)] == [TINY["meta_lr"]] * 6
    cosine = MetaTrainSettings(**{**TINY, "iterations": 10, "meta_lr_schedule": "cosine"})
    rates = [cosine.meta_lr_at(i) for i in range(10)]
    assert rates[0] == cosine.meta_lr and rates[5] == pytest.approx(cosine.meta_lr / 2)
    assert all(a > b > 0 for a, b in zip(rates, rates[1:], strict=False))
    assert cosine.to_dict()["meta_lr_schedule"] == "cosine"
    with pytest.raises(ValueError, match="meta_lr_schedule"):
        MetaTrainSettings(meta_lr_schedule="linear")
    # the schedule changes training, and a resumed run follows it from the iteration it stopped at
    family, config = make_family("quadratic"), OptimizerConfig()
    cosine = MetaTrainSettings(**{**TINY, "resume_every": 3, "meta_lr_schedule": "cosine"})
    full = meta_train(family, config, cosine)
    assert full.checkpoint.digest != meta_train(family, config, MetaTrainSettings(**TINY)).checkpoint.digest
    saved = []
    meta_train(family, config, cosine, on_resume_checkpoint=saved.append)
    assert meta_train(family, config, cosine, resume=saved[0]).checkpoint.digest == full.checkpoint.digest


MIXTURE = dict(iterations=4, horizon=10, max_horizon=30, unroll=5, instances=2, eval_every=2, eval_instances=2,
               eval_problems=2, meta_lr=3e-3, meta_loss="log", resume_every=2)
MLP_CONFIG = OptimizerConfig(architecture="feature_mlp", hidden_size=8, num_layers=1, output_scale=3e-3)


def test_the_feature_mlp_meta_trains_on_the_mixture_moves_its_weights_and_resumes_exactly():
    family = make_family("mixture", max_coords=5_000)
    settings = MetaTrainSettings(**MIXTURE)
    horizons = {settings.horizon_at(i) for i in range(50)}
    assert min(horizons) >= 5 and max(horizons) <= 30 and len(horizons) > 1 and all(h % 5 == 0 for h in horizons)
    saved = []
    full = meta_train(family, MLP_CONFIG, settings, on_resume_checkpoint=saved.append)
    initial = CoordinatewiseLSTM(MLP_CONFIG, generator=torch.Generator().manual_seed(0)).weights()
    assert not torch.equal(saved[-1].weights["head.weight"], initial["head.weight"].detach())
    assert all(torch.isfinite(w).all() for w in saved[-1].weights.values())
    assert all(torch.isfinite(torch.tensor(h["meta_loss"])) for h in full.history)
    resumed = meta_train(family, MLP_CONFIG, settings, resume=type(saved[0]).from_bytes(saved[0].to_bytes()))
    assert resumed.checkpoint.digest == full.checkpoint.digest
    # The checkpoint stops its time features at the longest run it was trained on.
    assert full.checkpoint.config.time_horizon == settings.max_horizon == 30


def test_the_log_meta_loss_is_the_mean_log_loss_over_the_unroll():
    batch = make_family("quadratic").sample(3, seed=0)
    net = CoordinatewiseLSTM(MLP_CONFIG, generator=torch.Generator().manual_seed(0))
    traj = Trajectory(batch.init_params(), init(MLP_CONFIG, 3 * batch.dim), 0)
    meta, after = run_unroll(MLP_CONFIG, net.weights(), batch, traj, 4, meta_loss="log")
    # Replay the same four steps and average log f(θ_t) for t = 1..4.
    theta, state, logs = batch.init_params(), init(MLP_CONFIG, 3 * batch.dim), []
    from service.lopt import step

    for t in range(4):
        _, grad = optimizee_gradient(batch, theta.detach(), t)
        with torch.no_grad():
            u, state = step(MLP_CONFIG, {k: v.detach() for k, v in net.weights().items()}, grad.reshape(-1), state)
        theta = theta + u.view(3, -1)
        logs.append(batch.loss(theta, t + 1).log().mean())
    assert torch.allclose(meta.detach(), torch.stack(logs).mean(), rtol=1e-5)
    assert after.step == 4


@pytest.mark.parametrize("output_scale, rises", [(1e-3, False), (3.0, True)], ids=["careful", "overshooting"])
def test_log_rise_charges_only_the_steps_above_the_initial_loss(output_scale, rises):
    """A careful optimizer's log_rise meta-loss is its log meta-loss; one whose steps overshoot the quadratic pays
    RISE_PENALTY times the log ratio of each loss above the run's initial loss, recomputed here by hand."""
    from service.metatrain.unroll import RISE_PENALTY

    config = OptimizerConfig(architecture="feature_mlp", hidden_size=4, num_layers=1, output_scale=output_scale)
    weights = CoordinatewiseLSTM(config, generator=torch.Generator().manual_seed(0)).weights()
    batch = make_family("quadratic", dim=4).sample(3, seed=2)
    theta = batch.init_params()
    losses = {}
    for kind in ("log", "log_rise"):
        traj = Trajectory(theta, init(config, theta.numel()), 0)
        first, traj = run_unroll(config, weights, batch, traj, 4, kind)
        second, traj = run_unroll(config, weights, batch, traj, 4, kind)
        losses[kind] = (float(first.detach()), float(second.detach()))
    # The same run again, step by step, to name each step's loss.
    initial = batch.loss(theta, 0).detach().log()
    traj = Trajectory(theta, init(config, theta.numel()), 0)
    logs = []
    for t in range(8):
        _, traj = run_unroll(config, weights, batch, traj, 1, "log")
        traj = traj.detach()
        logs.append(batch.loss(traj.theta, t + 1).detach().log())
    penalty = [float(sum(RISE_PENALTY * (lg - initial).clamp_min(0).mean() for lg in logs[k:k + 4])) / 4
               for k in (0, 4)]
    assert (sum(penalty) > 0.1) == rises
    for k in (0, 1):
        assert losses["log_rise"][k] == pytest.approx(losses["log"][k] + penalty[k], rel=1e-5, abs=1e-6)


def test_an_eval_seed_gives_every_run_seed_the_same_validation_problems():
    from service.metatrain.trainer import _validation_loss

    family = make_family("mixture", max_coords=2_000)
    weights = CoordinatewiseLSTM(MLP_CONFIG, generator=torch.Generator().manual_seed(0)).weights()
    small = {**MIXTURE, "max_horizon": 10}

    def loss(**over):
        return _validation_loss(MLP_CONFIG, weights, family, MetaTrainSettings(**{**small, **over}))

    assert loss(seed=0, eval_seed=7) == loss(seed=1, eval_seed=7) == loss(seed=7)
    assert loss(seed=0) != loss(seed=1)
    assert MetaTrainSettings(**small).validation_seed == 0
    with pytest.raises(ValueError, match="eval_seed"):
        MetaTrainSettings(eval_seed=-1)


def test_the_eval_seed_changes_which_weights_are_kept_never_the_training():
    family = make_family("mixture", max_coords=5_000)
    a = meta_train(family, MLP_CONFIG, MetaTrainSettings(**MIXTURE))
    b = meta_train(family, MLP_CONFIG, MetaTrainSettings(**MIXTURE, eval_seed=100))
    assert [h["meta_loss"] for h in a.history] == [h["meta_loss"] for h in b.history]
    assert [h.get("eval_loss") for h in a.history] != [h.get("eval_loss") for h in b.history]


def test_several_problems_per_iteration_average_their_meta_gradients():
    family = make_family("mixture", max_coords=5_000)
    settings = MetaTrainSettings(**MIXTURE)
    drawn = []
    sample = family.sample

    def recording(n, seed, split, **kw):
        drawn.append((seed, split))
        return sample(n, seed, split, **kw)

    family.sample = recording
    one = meta_train(family, MLP_CONFIG, settings)
    one_drawn = [d for d in drawn if d[1] == "train"]
    drawn.clear()
    two = meta_train(family, MLP_CONFIG, MetaTrainSettings(**MIXTURE, problems_per_iteration=2))
    two_drawn = [d for d in drawn if d[1] == "train"]
    # Problem 0 of every iteration is what the one-problem run drew; problem 1 is a draw of its own.
    assert two_drawn[0::2] == one_drawn and len(set(two_drawn)) == len(two_drawn)
    assert one.checkpoint.digest != two.checkpoint.digest
    assert all(torch.isfinite(torch.tensor(h["meta_loss"])) for h in two.history)
    assert "problems_per_iteration" not in settings.to_dict()
    assert MetaTrainSettings(problems_per_iteration=3).to_dict()["problems_per_iteration"] == 3
    with pytest.raises(ValueError, match="problems_per_iteration"):
        MetaTrainSettings(problems_per_iteration=0)


def test_one_meta_step_over_two_problems_follows_the_mean_of_their_gradients():
    """The first meta-step's gradient with two problems is the mean of each problem's own (Adam's first step
    is lr·sign(g) whatever its scale, so compare the gradients through a plain SGD meta-optimizer)."""
    family = make_family("mixture", max_coords=5_000)
    base = dict(MIXTURE, iterations=1, horizon=5, max_horizon=None, unroll=5, eval_every=1)
    grads, current = {}, {}
    original = torch.optim.Adam

    class Recording(torch.optim.SGD):
        def __init__(self, params, lr):
            self.params = list(params)
            super().__init__(self.params, lr=lr)

        def step(self, closure=None):
            grads[current["key"]] = torch.cat([p.grad.reshape(-1).clone() for p in self.params])
            return super().step(closure)

    torch.optim.Adam = Recording
    try:
        for current["key"], extra in [("both", {"problems_per_iteration": 2}), ("first", {})]:
            meta_train(family, MLP_CONFIG, MetaTrainSettings(**base, **extra, grad_clip=1e9))
        second_seed = MetaTrainSettings(**base, problems_per_iteration=2).problem_seed(0, 1)
        family_sample = family.sample
        family.sample = lambda n, seed, split, **kw: family_sample(
            n, second_seed if split == "train" else seed, split, **kw)
        current["key"] = "second"
        meta_train(family, MLP_CONFIG, MetaTrainSettings(**base, grad_clip=1e9))
    finally:
        torch.optim.Adam = original
    torch.testing.assert_close(grads["both"], (grads["first"] + grads["second"]) / 2, rtol=1e-4, atol=1e-7)
