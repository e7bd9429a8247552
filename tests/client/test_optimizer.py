"""RemoteOptimizer and LocalOptimizer as torch users meet them: the same updates bit for bit, state_dicts
that resume a run in a new session, parameter groups, missing gradients, a lost session."""

from __future__ import annotations

import io

import pytest
import torch

import client
from client import Client, LocalOptimizer, RemoteOptimizer
from tests.client.conftest import OPTIMIZER


def mlp(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))


def data(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 5, generator=g), torch.randn(16, 2, generator=g)


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, *, closure: bool = False) -> None:
    x, y = data()
    for _ in range(steps):
        def loss_fn() -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        if closure:
            opt.step(loss_fn)
        else:
            loss_fn()
            opt.step()


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.fixture
def local(l2o: Client):
    file = l2o.optimizers.download(OPTIMIZER)
    return lambda params: LocalOptimizer(params, checkpoint=file)


def test_remote_and_local_train_to_the_same_parameters_bit_for_bit(l2o: Client, local):
    remote_model, local_model, start = mlp(), mlp(), mlp()
    groups = lambda m: [{"params": m[0].parameters()}, {"params": m[2].parameters()}]  # noqa: E731
    remote = RemoteOptimizer(groups(remote_model), optimizer=OPTIMIZER, client=l2o)
    offline = local(groups(local_model))
    train(remote_model, remote, 8, closure=True)
    train(local_model, offline, 8)
    assert same(remote_model, local_model) and not same(remote_model, start)  # it trained, identically
    session = l2o.sessions.get(remote.session_id)
    assert session.step == 8 == remote.step_count
    assert session.shapes == {"0.0": [6, 5], "0.1": [6], "1.0": [2, 6], "1.1": [2]}  # every group, by index


def test_named_parameters_name_the_session_and_local_downloads_by_reference(l2o: Client):
    remote_model, local_model = mlp(), mlp()
    remote = RemoteOptimizer(remote_model.named_parameters(), optimizer=OPTIMIZER, client=l2o)
    offline = LocalOptimizer(local_model.named_parameters(), optimizer=f"{OPTIMIZER}:1", client=l2o)
    train(remote_model, remote, 3)
    train(local_model, offline, 3)
    assert same(remote_model, local_model)
    assert list(l2o.sessions.get(remote.session_id).shapes) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_state_dict_resumes_the_run_in_a_new_session(l2o: Client, local):
    model, uninterrupted = mlp(), mlp()
    first = RemoteOptimizer(model.parameters(), optimizer=OPTIMIZER, client=l2o)
    train(model, first, 4)
    saved = io.BytesIO()
    torch.save(first.state_dict(), saved)
    old_session = first.session_id
    first.close()  # the session is gone, as after a restart or an expiry

    second = RemoteOptimizer(model.parameters(), optimizer=OPTIMIZER, client=l2o)
    second.load_state_dict(torch.load(io.BytesIO(saved.getvalue()), weights_only=True))
    assert second.session_id is None and second.step_count == 4  # loading costs no round trip
    train(model, second, 4)
    assert second.session_id != old_session and l2o.sessions.get(second.session_id).step == 8

    reference = local(uninterrupted.parameters())
    train(uninterrupted, reference, 8)
    assert same(model, uninterrupted)


def test_state_dicts_move_between_remote_and_local(l2o: Client, local):
    model, twin = mlp(), mlp()
    remote = RemoteOptimizer(model.parameters(), optimizer=OPTIMIZER, client=l2o)
    train(model, remote, 3)
    offline = local(twin.parameters())
    twin.load_state_dict(model.state_dict())
    offline.load_state_dict(remote.state_dict())
    train(model, remote, 3)
    train(twin, offline, 3)
    assert same(model, twin) and offline.step_count == 6


def test_param_groups_added_later_join_with_a_fresh_state(l2o: Client, local):
    a, b = mlp(), mlp()
    remote = RemoteOptimizer(a[0].parameters(), optimizer=OPTIMIZER, client=l2o)
    offline = local(b[0].parameters())
    train(a, remote, 2)
    train(b, offline, 2)
    first_session = remote.session_id
    remote.add_param_group({"params": a[2].parameters()})
    offline.add_param_group({"params": b[2].parameters()})
    train(a, remote, 2)
    train(b, offline, 2)
    assert same(a, b)
    session = l2o.sessions.get(remote.session_id)
    assert remote.session_id != first_session and session.n_coords == 6 * 5 + 6 + 2 * 6 + 2 and session.step == 4
    with pytest.raises(client.SessionNotFoundError):
        l2o.sessions.get(first_session)  # the old session was deleted when the state moved


def test_parameters_without_gradients_are_left_alone(l2o: Client):
    model = mlp()
    model[2].weight.requires_grad_(False)
    opt = RemoteOptimizer(model.parameters(), optimizer=OPTIMIZER, client=l2o)
    opt.step()
    assert opt.session_id is None and opt.step_count == 0  # no gradients at all: nothing sent, as torch does
    frozen = model[2].weight.clone()
    train(model, opt, 1)
    assert list(l2o.sessions.get(opt.session_id).shapes) == ["0.0", "0.1", "0.3"]
    assert torch.equal(model[2].weight, frozen)

    # A parameter of the session that has no gradient this step is sent a zero gradient and not moved.
    opt.zero_grad()
    x, y = data()
    model[0].bias.requires_grad_(False)
    torch.nn.functional.mse_loss(model(x), y).backward()
    bias = model[0].bias.clone()
    opt.step()
    assert torch.equal(model[0].bias, bias) and l2o.sessions.get(opt.session_id).step == 2


def test_a_lost_session_says_to_resume_from_the_state_dict_and_that_works(l2o: Client, app, local):
    model, reference_model = mlp(), mlp()
    opt = RemoteOptimizer(model.parameters(), optimizer=OPTIMIZER, client=l2o)
    train(model, opt, 2)
    checkpoint = opt.state_dict()
    app.state.sessions.store.delete(opt.session_id)  # the server crashed with the memory store
    with pytest.raises(client.SessionLostError, match=r"load_state_dict"):
        train(model, opt, 1)
    # The failed step changed nothing: resuming from the state_dict continues as if there was no crash.
    opt.load_state_dict(checkpoint)
    train(model, opt, 2)
    reference = local(reference_model.parameters())
    train(reference_model, reference, 4)
    assert same(model, reference_model)


def test_bad_state_dicts_are_refused_with_a_reason(l2o: Client, ckpt):
    model = mlp()
    opt = RemoteOptimizer(model.parameters(), optimizer=OPTIMIZER, client=l2o)
    with pytest.raises(ValueError, match="no 'l2o' entry"):
        opt.load_state_dict(torch.optim.SGD(model.parameters(), lr=0.1).state_dict())
    train(model, opt, 1)
    state = opt.state_dict()
    other = LocalOptimizer(model.parameters(), checkpoint=ckpt[:-4] + b"    ")  # different bytes, same model
    with pytest.raises(ValueError, match="sha256"):
        other.load_state_dict(state)
        train(model, other, 1)
    with pytest.raises(ValueError, match="either optimizer= .* or checkpoint="):
        LocalOptimizer(model.parameters())


def test_a_float64_model_steps_as_its_float32_twin_and_a_nan_gradient_changes_nothing(local):
    """LocalOptimizer converts gradients to float32 for the LSTM and updates back to each parameter's dtype;
    a non-finite gradient is refused by name before anything moves."""
    single, double = mlp(), mlp().double()
    train(single, local(single.parameters()), 3)
    x, y = data()
    opt = local(double.parameters())
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.mse_loss(double(x.double()), y.double()).backward()
        opt.step()
    for p, q in zip(single.parameters(), double.parameters(), strict=True):
        assert q.dtype == torch.float64
        torch.testing.assert_close(q.float(), p, rtol=1e-5, atol=1e-6)
    before = [p.clone() for p in double.parameters()]
    for p in double.parameters():
        p.grad = torch.zeros_like(p)
    double[2].bias.grad[0] = float("nan")
    with pytest.raises(ValueError, match="'0.3'.*NaN"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(double.parameters(), before, strict=True))
    assert opt.step_count == 3
