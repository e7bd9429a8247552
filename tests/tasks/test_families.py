import copy

import pytest
import torch

from service.tasks import FAMILIES, make_family

CASES = [
    ("quadratic", {}),
    ("mlp", {}),
    ("mlp", {"hidden_sizes": [20, 20], "activation": "relu"}),
    ("logistic", {}),
    ("conv", {}),
    ("mixture", {}),
]


def loss_alone(batch, theta: torch.Tensor, i: int, step: int) -> torch.Tensor:
    """Instance i's loss computed in a batch of one: its slice of the parameters, and of the data (the
    minibatch the batch draws for every instance at `step`, for the digit tasks; the per-instance tensors
    for the others)."""
    if hasattr(batch, "minibatch"):
        x, y = batch.minibatch(step)
        one = copy.copy(batch)
        one.minibatch = lambda step: (x[i:i + 1], y[i:i + 1])
        return one.loss(theta[i:i + 1], step)
    return alone(batch, i).loss(theta[i:i + 1], step)


def alone(batch, i: int):
    """Instance i of a batch as a batch of one: a copy whose per-instance tensors (leading dimension the
    number of instances) are sliced to that instance."""
    n = batch.init_params().shape[0]
    one = copy.copy(batch)
    sliced = 0
    for name, value in vars(one).items():
        if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == n:
            setattr(one, name, value[i:i + 1])
            sliced += 1
    assert sliced, f"{type(batch).__name__} holds no per-instance tensor to slice"
    return one


@pytest.mark.parametrize("name,params", CASES)
def test_batched_loss_equals_each_instance_alone(name, params):
    family = make_family(name, **params)
    batch = family.sample(5, seed=3)
    theta = batch.init_params() + 0.01 * torch.randn(5, batch.dim)
    together = batch.loss(theta, step=2)
    assert together.shape == (5,)
    assert torch.isfinite(together).all()
    # Each instance as a batch of one (its own slice of every per-instance tensor) gives the loss it has
    # in the batch.
    for i in [0, 4]:
        alone_loss = loss_alone(batch, theta, i, step=2)
        assert alone_loss.shape == (1,)
        torch.testing.assert_close(alone_loss[0], together[i])
    grad, = torch.autograd.grad(batch.loss(theta.requires_grad_(), 0).sum(), theta)
    # Instance i's loss depends on instance i's parameters only.
    theta2 = theta.detach().clone()
    theta2[1:] += 1.0
    torch.testing.assert_close(batch.loss(theta2, 2)[0], together[0].detach())


@pytest.mark.parametrize("name,params", CASES)
def test_same_seed_same_instances_and_splits_differ(name, params):
    family = make_family(name, **params)
    a, b = family.sample(3, seed=7), family.sample(3, seed=7)
    assert torch.equal(a.init_params(), b.init_params())
    assert torch.equal(a.loss(a.init_params(), 5), b.loss(b.init_params(), 5))
    held = family.sample(3, seed=7, split="heldout")
    assert not torch.equal(a.loss(a.init_params(), 5), held.loss(held.init_params(), 5))


def test_quadratic_matches_the_paper_definition():
    batch = make_family("quadratic", dim=10).sample(2, seed=0)
    theta = torch.randn(2, 10)
    expected = ((batch.W @ theta.unsqueeze(-1)).squeeze(-1) - batch.y).pow(2).sum(1)
    torch.testing.assert_close(batch.loss(theta, 0), expected)
    assert batch.W.shape == (2, 10, 10)


def test_mlp_minibatches_follow_the_step():
    batch = make_family("mlp").sample(2, seed=0)
    theta = batch.init_params()
    assert not torch.equal(batch.loss(theta, 0), batch.loss(theta, 1))
    assert batch.minibatch(0)[0].shape == (2, 128, 64)


def test_unknown_family_and_bad_params_are_named():
    with pytest.raises(ValueError, match="unknown task family 'nope'"):
        make_family("nope")
    with pytest.raises(ValueError, match="activation"):
        make_family("mlp", activation="swish")
    with pytest.raises(ValueError, match="bad parameters"):
        make_family("quadratic", width=3)
    assert set(FAMILIES) >= {"quadratic", "mlp", "conv", "logistic"}


def test_the_mixture_covers_every_kind_and_keeps_its_size_bound():
    from service.tasks.mixture import KINDS

    family = make_family("mixture", max_coords=20_000)
    seen = set()
    for seed in range(40):
        spec = family.describe(seed)
        seen.add(spec["kind"])
        assert family.describe(seed) == spec  # a seed always draws the same problem
        if spec["kind"] in ("mlp", "regression") and seed < 12:
            batch = family.sample(4, seed)
            assert batch.dim * 4 <= 20_000 or batch.description["width"] == 8
            loss = batch.loss(batch.init_params(), 0)
            assert loss.shape == (4,) and torch.isfinite(loss).all()
    assert seen == set(KINDS)


def test_rescaling_reparametrises_the_parameters_and_scales_the_loss():
    """With param_scale c the model sees c·θ, so θ/c under it is θ unscaled; the gradient grows by c."""
    import torch.nn.functional as F

    from service.tasks.digits import Layout
    from service.tasks.functional import Dataset, FunctionalBatch

    layout = Layout((("w", (3, 4)), ("b", (3,))))
    data = Dataset(torch.randn(64, 4, generator=torch.Generator().manual_seed(0)), torch.randint(0, 3, (64,)))

    def loss_fn(p, x, y):
        return F.cross_entropy(F.linear(x, p["w"], p["b"]), y, reduction="none")

    def make(c, s):
        return FunctionalBatch(layout, loss_fn, data, n_instances=2, seed=1, batch_size=16, param_scale=c, loss_scale=s)
    plain, scaled = make(1.0, 1.0), make(4.0, 0.5)
    assert torch.allclose(scaled.init_params() * 4.0, plain.init_params())
    theta = torch.randn(2, layout.dim).requires_grad_()
    theta_s = (theta.detach() / 4.0).requires_grad_()
    assert torch.allclose(scaled.loss(theta_s, 3), plain.loss(theta, 3) * 0.5)
    (g,) = torch.autograd.grad(plain.loss(theta, 3).sum(), theta)
    (g_s,) = torch.autograd.grad(scaled.loss(theta_s, 3).sum(), theta_s)
    assert torch.allclose(g_s, g * 4.0 * 0.5, rtol=1e-5, atol=1e-7)


def test_clean_teacher_problems_come_without_noise_and_leave_other_draws_alone():
    """clean=0 draws exactly the problems it drew before; clean=1 makes every teacher problem noise-free and
    small, with the same inputs and teacher as its noisy twin."""
    import random

    from service.tasks.mixture import teacher_data

    plain, off, every = (make_family("mixture", max_coords=20_000, **p) for p in ({}, {"clean": 0.0}, {"clean": 1.0}))
    assert "clean" not in off.params() and every.params()["clean"] == 1.0
    teacher_kinds = 0
    for seed in range(40):
        spec = plain.describe(seed)
        assert off.describe(seed) == spec
        drawn = every.describe(seed)
        if spec["kind"] == "regression" or spec.get("data") == "teacher":
            teacher_kinds += 1
            assert drawn["clean"] is True and drawn["examples"] in (128, 256, 512, 1024)
            assert {k: v for k, v in drawn.items() if k not in ("clean", "examples")} == spec
            if teacher_kinds <= 3:
                assert len(every.sample(2, seed).data) == drawn["examples"]
        else:
            assert drawn == spec
    assert teacher_kinds >= 5

    def pair(classify):
        return [teacher_data(random.Random(7), 512, 8, 3, classify, 1.0, torch.Generator().manual_seed(7), noisy)
                for noisy in (True, False)]
    (noisy, clean) = pair(classify=False)
    assert torch.equal(noisy.x, clean.x)
    assert 0.07 < (noisy.y - clean.y).std() < 0.13
    (noisy, clean) = pair(classify=True)
    assert torch.equal(noisy.x, clean.x)
    assert 0.005 < (noisy.y != clean.y).float().mean() < 0.08
    with pytest.raises(ValueError, match="clean"):
        make_family("mixture", clean=1.5)
