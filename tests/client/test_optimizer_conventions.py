"""RemoteOptimizer and LocalOptimizer follow torch.optim's conventions: `lr` scales the learned update and
every lr_scheduler drives it, `weight_decay` is decoupled, param groups refuse options they do not have,
`close()` / `with` / garbage collection free the session, and older state_dicts still load."""

from __future__ import annotations

import gc
from collections.abc import Callable

import pytest
import torch
from torch.optim import lr_scheduler

import client
from client import Client, LocalOptimizer, RemoteOptimizer
from tests.client.conftest import OPTIMIZER
from tests.client.test_optimizer import mlp, same, train

STEPS = 6


def fixed_grads(seed: int = 3) -> list[list[torch.Tensor]]:
    """Gradients that do not depend on the parameters: every optimizer fed them sees the same LSTM inputs, so
    its learned updates are the same whatever its lr, and only what it applies differs."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(4, 3, generator=g), torch.randn(3, generator=g)] for _ in range(STEPS)]


def params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(4, 3, generator=g)), torch.nn.Parameter(torch.randn(3, generator=g))]


def applied(opt: torch.optim.Optimizer, ps: list[torch.nn.Parameter], *,
            after_step: Callable[[], None] = lambda: None) -> tuple[list[list[torch.Tensor]], list[float]]:
    """Step through fixed_grads(); the change of each parameter at each step, and the lr before each step."""
    deltas, lrs = [], []
    for grads in fixed_grads():
        before = [p.detach().clone() for p in ps]
        for p, grad in zip(ps, grads, strict=True):
            p.grad = grad.clone()
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        deltas.append([p.detach() - b for p, b in zip(ps, before, strict=True)])
        after_step()
    return deltas, lrs


def updates(ckpt: bytes) -> list[list[torch.Tensor]]:
    """The learned updates themselves (lr 1, no decay)."""
    ps = params()
    return applied(LocalOptimizer(ps, checkpoint=ckpt), ps)[0]


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_lr_scales_the_update_and_weight_decay_is_decoupled(ckpt):
    unit = updates(ckpt)
    assert any(u.abs().max() > 1e-4 for step in unit for u in step)  # the updates are not all zero

    ps = params()
    deltas, _ = applied(LocalOptimizer(ps, checkpoint=ckpt, lr=0.25), ps)
    for delta, u in zip(deltas, unit, strict=True):
        for d, v in zip(delta, u, strict=True):
            close(d, 0.25 * v)

    ps, start = params(), params()
    opt = LocalOptimizer([{"params": [ps[0]], "weight_decay": 0.1}, {"params": [ps[1]], "lr": 0.5}],
                         checkpoint=ckpt, lr=0.2)
    applied(opt, ps)
    expected_w, expected_b = start[0].detach(), start[1].detach()
    for u in unit:
        expected_w = expected_w * (1 - 0.2 * 0.1) + 0.2 * u[0]   # θ ← θ·(1 − lr·wd) + lr·update
        expected_b = expected_b + 0.5 * u[1]                      # its group's own lr, no decay
    close(ps[0].detach(), expected_w)
    close(ps[1].detach(), expected_b)


SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], object]] = {
    "StepLR": lambda opt: lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
    "LambdaLR": lambda opt: lr_scheduler.LambdaLR(opt, lambda epoch: 1 / (epoch + 1)),
    "OneCycleLR": lambda opt: lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=STEPS, cycle_momentum=False),
    "CosineAnnealingLR": lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS - 1),
    "ReduceLROnPlateau": lambda opt: lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5),
    "SequentialLR": lambda opt: lr_scheduler.SequentialLR(
        opt, [lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=2), lr_scheduler.ExponentialLR(opt, 0.8)],
        milestones=[2]),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_lr_scheduler_drives_the_applied_update(ckpt, name):
    unit = updates(ckpt)
    ps = params()
    opt = LocalOptimizer(ps, checkpoint=ckpt)
    scheduler = SCHEDULERS[name](opt)
    tick = (lambda: scheduler.step(1.0)) if name == "ReduceLROnPlateau" else scheduler.step  # a loss that stalls
    deltas, lrs = applied(opt, ps, after_step=tick)
    assert len(set(lrs)) >= 3, lrs  # the schedule moved lr ...
    for delta, u, lr in zip(deltas, unit, lrs, strict=True):
        for d, v in zip(delta, u, strict=True):
            close(d, lr * v)         # ... and the step applied it


def test_remote_applies_lr_and_weight_decay_as_local_does(l2o: Client, ckpt):
    remote_model, local_model = mlp(), mlp()
    remote = RemoteOptimizer(remote_model.parameters(), optimizer=OPTIMIZER, client=l2o, lr=0.5, weight_decay=0.01)
    offline = LocalOptimizer(local_model.parameters(), checkpoint=l2o.optimizers.download(OPTIMIZER), lr=0.5,
                             weight_decay=0.01)
    schedulers = [lr_scheduler.StepLR(opt, step_size=2, gamma=0.1) for opt in (remote, offline)]
    for _ in range(4):
        train(remote_model, remote, 1)
        train(local_model, offline, 1)
        for s in schedulers:
            s.step()
    assert same(remote_model, local_model) and remote.param_groups[0]["lr"] == pytest.approx(0.005)


def test_unknown_group_options_and_bad_values_are_refused_by_name(ckpt):
    model = mlp()
    with pytest.raises(ValueError, match=r"no param group option 'betas', 'momentum': its options are lr and "
                                         r"weight_decay"):
        LocalOptimizer([{"params": model.parameters(), "momentum": 0.9, "betas": (0.9, 0.99)}], checkpoint=ckpt)
    opt = LocalOptimizer(model[0].parameters(), checkpoint=ckpt)
    with pytest.raises(ValueError, match="'nesterov'"):
        opt.add_param_group({"params": model[2].parameters(), "nesterov": True})
    assert len(opt.param_groups) == 1  # nothing was added
    for bad in ({"lr": -1.0}, {"weight_decay": float("nan")}, {"lr": "fast"}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be a finite number >= 0"):
            LocalOptimizer(model.parameters(), checkpoint=ckpt, **bad)
    with pytest.raises(ValueError, match="lr must be"):
        opt.add_param_group({"params": model[2].parameters(), "lr": -0.1})


def test_with_and_close_delete_the_session(l2o: Client):
    model = mlp()
    with RemoteOptimizer(model.parameters(), optimizer=OPTIMIZER, client=l2o) as opt:
        train(model, opt, 2)
        session = opt.session_id
        assert l2o.sessions.get(session).step == 2
    with pytest.raises(client.SessionNotFoundError):
        l2o.sessions.get(session)
    opt.close()  # closing twice is harmless


def test_collected_optimizers_free_their_sessions(l2o: Client, settings):
    assert settings.session_max_per_key == 16
    model = mlp()
    for _ in range(settings.session_max_per_key + 4):  # the 17th would hit TooManySessionsError if none were freed
        opt = RemoteOptimizer(model.parameters(), optimizer=OPTIMIZER, client=l2o)
        train(model, opt, 1)
        del opt
        gc.collect()
    assert l2o.sessions.list() == []


def test_a_state_dict_from_before_lr_existed_still_resumes(l2o: Client):
    model, uninterrupted = mlp(), mlp()
    first = RemoteOptimizer(model.parameters(), optimizer=OPTIMIZER, client=l2o)
    train(model, first, 3)
    old = first.state_dict()
    # The layout of l2o-optimizer-state/1 as saved before lr and weight_decay: groups hold only their params.
    old["param_groups"] = [{"params": g["params"]} for g in old["param_groups"]]
    first.close()
    second = RemoteOptimizer(model.parameters(), optimizer=OPTIMIZER, client=l2o)
    second.load_state_dict(old)
    assert second.param_groups[0]["lr"] == 1.0 and second.param_groups[0]["weight_decay"] == 0.0
    train(model, second, 3)
    reference = RemoteOptimizer(uninterrupted.parameters(), optimizer=OPTIMIZER, client=l2o)
    train(uninterrupted, reference, 6)
    assert same(model, uninterrupted)

    # A newer state_dict carries its lr, as torch's optimizers do.
    second.param_groups[0]["lr"] = 0.3
    third = RemoteOptimizer(model.parameters(), optimizer=OPTIMIZER, client=l2o)
    third.load_state_dict(second.state_dict())
    assert third.param_groups[0]["lr"] == 0.3


@pytest.mark.parametrize("architecture", ["lstm", "feature_mlp"])
def test_local_state_dicts_resume_either_architecture_bit_for_bit(architecture):
    from tests.conftest import checkpoint_bytes

    data = checkpoint_bytes(architecture=architecture, hidden_size=8, num_layers=1, seed=5)
    model, uninterrupted = mlp(), mlp()
    first = LocalOptimizer(model.parameters(), checkpoint=data)
    train(model, first, 3)
    second = LocalOptimizer(model.parameters(), checkpoint=data)
    second.load_state_dict(first.state_dict())  # each architecture's own state layout travels
    train(model, second, 3)
    reference = LocalOptimizer(uninterrupted.parameters(), checkpoint=data)
    train(uninterrupted, reference, 6)
    assert same(model, uninterrupted) and not same(model, mlp())
