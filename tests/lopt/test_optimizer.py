import pytest
import torch

from service.lopt import Checkpoint, CheckpointError, CoordinatewiseLSTM, OptimizerConfig, init, step
from service.lopt.functional import step_autograd


def make(config=None, seed=0):
    config = config or OptimizerConfig()
    net = CoordinatewiseLSTM(config, generator=torch.Generator().manual_seed(seed))
    return config, {k: v.detach() for k, v in net.weights().items()}


def test_about_5k_weights_and_80_floats_of_state_per_coordinate():
    config, weights = make()
    assert 4_500 < sum(w.numel() for w in weights.values()) < 5_500
    assert init(config, 7).hc.shape == (7, 2, 2, 20)
    assert config.state_floats_per_coord == 80


@pytest.mark.parametrize("preprocess", ["log_sign", "none"])
def test_permutation_equivariant_over_coordinates(preprocess):
    config, weights = make(OptimizerConfig(preprocess=preprocess))
    g = torch.randn(500) * torch.logspace(-6, 2, 500)
    state = init(config, 500)
    perm = torch.randperm(500, generator=torch.Generator().manual_seed(1))
    for _ in range(3):  # across several steps, so the hidden state matters too
        u, new_state = step(config, weights, g, state)
        up, new_state_p = step(config, weights, g[perm], type(state)(state.hc[perm]))
        torch.testing.assert_close(up, u[perm], rtol=0, atol=1e-6)
        torch.testing.assert_close(new_state_p.hc, new_state.hc[perm], rtol=0, atol=1e-6)
        state = new_state
        g = torch.randn(500)


def test_update_of_a_coordinate_depends_only_on_its_own_gradient():
    config, weights = make()
    g = torch.randn(64)
    u, _ = step(config, weights, g, init(config, 64))
    g2 = g.clone()
    g2[1:] = torch.randn(63) * 100
    u2, _ = step(config, weights, g2, init(config, 64))
    assert u2[0] == u[0]


def test_no_grad_step_matches_differentiable_step_and_keeps_inputs():
    config, weights = make()
    g = torch.randn(10_000)
    state = init(config, 10_000)
    state = type(state)(torch.randn_like(state.hc))
    before = state.hc.clone()
    with torch.no_grad():
        u_fast, s_fast = step(config, weights, g, state)
    u_ref, s_ref = step_autograd(config, weights, g, state)
    torch.testing.assert_close(u_fast, u_ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s_fast.hc, s_ref.hc.detach(), rtol=1e-5, atol=1e-6)
    assert torch.equal(state.hc, before)


def test_output_scale_scales_updates():
    config, weights = make(OptimizerConfig(output_scale=0.1))
    config2 = OptimizerConfig(output_scale=0.2)
    g = torch.randn(100)
    u1, _ = step(config, weights, g, init(config, 100))
    u2, _ = step(config2, weights, g, init(config2, 100))
    torch.testing.assert_close(u2, 2 * u1)


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    config, weights = make(OptimizerConfig(hidden_size=8, num_layers=3, trained_on={"family": "quadratic"},
                                           command="l2o train --family quadratic"))
    ckpt = Checkpoint(config, weights)
    ckpt.save(tmp_path / "c")
    loaded = Checkpoint.load(tmp_path / "c")
    assert loaded.config == config
    assert loaded.digest == ckpt.digest
    g = torch.randn(300)
    u1, s1 = step(config, weights, g, init(config, 300))
    u2, s2 = step(loaded.config, loaded.weights, g, init(config, 300))
    assert torch.equal(u1, u2) and torch.equal(s1.hc, s2.hc)
    assert Checkpoint.from_bytes(ckpt.to_bytes()).digest == ckpt.digest


def test_checkpoint_rejects_mismatch_and_corruption(tmp_path):
    config, weights = make()
    data = Checkpoint(config, weights).to_bytes()
    with pytest.raises(CheckpointError, match="digest mismatch"):
        Checkpoint.from_bytes(data, expected_sha256="0" * 64)
    with pytest.raises(CheckpointError, match="does not match"):
        Checkpoint.from_bytes(data, config=OptimizerConfig(hidden_size=21).to_dict())
    with pytest.raises(CheckpointError, match="exceeds the body"):
        Checkpoint.from_bytes(data[:100])
    with pytest.raises(CheckpointError):
        Checkpoint.from_bytes(b"garbage!" * 3)
    bad = dict(weights)
    bad["cell.0.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match="shape"):
        Checkpoint(config, bad)
    nan = dict(weights)
    nan["head.bias"] = torch.tensor([float("nan")])
    with pytest.raises(CheckpointError, match="NaN"):
        Checkpoint(config, nan)
    missing = {k: v for k, v in weights.items() if k != "head.bias"}
    with pytest.raises(CheckpointError, match="missing"):
        Checkpoint(config, missing)
