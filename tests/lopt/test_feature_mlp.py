"""The feature MLP: Adam at the start, scale-free inputs, exact gradients, both state precisions, its config."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from service.lopt import (
    Checkpoint,
    CheckpointError,
    ConfigError,
    CoordinatewiseLSTM,
    LSTMState,
    OptimizerConfig,
    feature_mlp,
    init,
    step,
)
from service.lopt.functional import step_autograd

CFG = OptimizerConfig(architecture="feature_mlp", hidden_size=8, num_layers=2, output_scale=0.003)
MEMORY = dataclasses.replace(CFG, step_memory=True)
RELATIVE = dataclasses.replace(CFG, relative_correction=True)
WARM_CORRECTION = dataclasses.replace(CFG, correction_warmup=True)
MEMORY_UP = dataclasses.replace(MEMORY, memory_up_only=True)
BOTH = pytest.mark.parametrize("cfg", [CFG, MEMORY, RELATIVE, WARM_CORRECTION, MEMORY_UP],
                               ids=["plain", "step_memory", "relative_correction", "correction_warmup",
                                    "memory_up_only"])


def trained_like(seed: int = 0, dtype: torch.dtype = torch.float32, cfg=CFG) -> dict[str, torch.Tensor]:
    """Weights with a non-zero output layer, as meta-training leaves them."""
    net = CoordinatewiseLSTM(cfg, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    return {k: (v.detach() + (0.5 * torch.randn(v.shape, generator=g) if k.startswith("head.") else 0)).to(dtype)
            for k, v in net.weights().items()}


def run(weights, grads_seq, dtype=torch.float32, cfg=CFG):
    state, out = init(cfg, grads_seq[0].numel(), dtype=dtype), []
    for g in grads_seq:
        with torch.no_grad():
            u, state = step(cfg, weights, g, state)
        out.append(u)
    return out, state


@BOTH
def test_a_fresh_feature_mlp_is_adam_at_its_base_step(cfg):
    net = CoordinatewiseLSTM(cfg, generator=torch.Generator().manual_seed(0))
    weights = {k: v.detach() for k, v in net.weights().items()}
    g = torch.Generator().manual_seed(1)
    grads_seq = [torch.randn(50, generator=g) * 10 ** (t % 3) for t in range(30)]
    ours, state = run(weights, grads_seq, cfg=cfg)
    assert state.hc.shape == (50, cfg.state_floats_per_coord) and not state.hc[:, 8:].any()
    param = torch.zeros(50, requires_grad=True)
    adam = torch.optim.Adam([param], lr=CFG.output_scale, eps=0.0)
    theta = torch.zeros(50)
    for g_t, u in zip(grads_seq, ours, strict=True):
        param.grad = g_t.clone()
        adam.step()
        theta = theta + u
    assert torch.allclose(theta, param.detach(), rtol=1e-5, atol=1e-8)


@BOTH
@pytest.mark.parametrize("scale", [1e-4, 1e3])
def test_updates_do_not_depend_on_the_gradients_scale(scale, cfg):
    weights = trained_like(cfg=cfg)
    g = torch.Generator().manual_seed(2)
    grads_seq = [torch.randn(40, generator=g) for _ in range(8)]
    base, _ = run(weights, grads_seq, cfg=cfg)
    scaled, _ = run(weights, [x * scale for x in grads_seq], cfg=cfg)
    for a, b in zip(base, scaled, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-9)


def test_coordinates_are_independent_and_order_does_not_matter():
    weights = trained_like()
    g = torch.Generator().manual_seed(3)
    grads_seq = [torch.randn(30, generator=g) for _ in range(5)]
    perm = torch.randperm(30, generator=g)
    base, _ = run(weights, grads_seq)
    permuted, _ = run(weights, [x[perm] for x in grads_seq])
    # Equal up to float rounding: a matrix product may block rows differently at other offsets.
    assert torch.allclose(base[-1][perm], permuted[-1], rtol=1e-6, atol=1e-10)


@BOTH
def test_gradients_with_respect_to_the_weights_match_finite_differences(cfg):
    weights = {k: v.double().requires_grad_() for k, v in trained_like(cfg=cfg).items()}
    g = torch.Generator().manual_seed(4)
    grads_seq = [torch.randn(6, generator=g, dtype=torch.float64) for _ in range(3)]

    def total(*ws):
        named = dict(zip(weights, ws, strict=True))
        state = init(cfg, 6, dtype=torch.float64)
        out = torch.zeros((), dtype=torch.float64)
        for x in grads_seq:
            u, state = feature_mlp.step(named, x, state.hc if hasattr(state, "hc") else state, cfg.output_scale,
                                        cfg.num_layers)
            out = out + (u * torch.arange(1, 7, dtype=torch.float64)).sum()
        return out

    assert torch.autograd.gradcheck(total, tuple(weights.values()), eps=1e-6, atol=1e-7)


def test_the_server_step_and_the_differentiable_step_are_the_same_function():
    weights = trained_like()
    g = torch.randn(20, generator=torch.Generator().manual_seed(5))
    state = init(CFG, 20)
    with torch.no_grad():
        u1, s1 = step(CFG, weights, g, state)
    w_grad = {k: v.clone().requires_grad_() for k, v in weights.items()}
    u2, s2 = step(CFG, w_grad, g, state)
    assert torch.equal(u1, u2.detach()) and torch.equal(s1.hc, s2.hc.detach())


@BOTH
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_state_stays_close_and_keeps_its_dtype(dtype, cfg):
    weights = trained_like(cfg=cfg)
    g = torch.Generator().manual_seed(6)
    # float16 cannot hold the square of a gradient of 300 (or of 1e-4): the state keeps sqrt(v) instead.
    grads_seq = [torch.randn(64, generator=g) * s for s in (1e-4, 300.0) for _ in range(6)]
    full, _ = run(weights, grads_seq, cfg=cfg)
    half, state = run(weights, grads_seq, dtype=dtype, cfg=cfg)
    assert state.hc.dtype == dtype and state.hc.shape == (64, cfg.state_floats_per_coord)
    for a, b in zip(full, half, strict=True):
        assert torch.isfinite(b).all()
        assert torch.allclose(a, b, rtol=0.05, atol=2e-4)


def test_its_state_is_eight_floats_a_coordinate():
    assert CFG.state_floats_per_coord == 8 and CFG.state_shape(5) == (5, 8)
    assert init(CFG, 5).hc.shape == (5, 8)
    with pytest.raises(ValueError, match="state has shape"):
        step(CFG, trained_like(), torch.zeros(5), init(OptimizerConfig(), 5))


def test_updates_are_bounded_whatever_the_weights():
    weights = {k: v * 1e3 for k, v in trained_like().items()}
    g = torch.Generator().manual_seed(7)
    out, _ = run(weights, [torch.randn(100, generator=g) * 1e6 for _ in range(10)])
    bound = CFG.output_scale * torch.exp(torch.tensor(feature_mlp.MAGNITUDE_RANGE)) * (
        feature_mlp.DIRECTION_RANGE + 1 / (1 - feature_mlp.BETA2) ** 0.5)
    assert all(torch.isfinite(u).all() and u.abs().max() <= bound for u in out)


def test_the_config_names_its_architecture_and_only_its_own_fields():
    d = CFG.to_dict()
    assert d["architecture"] == "feature_mlp" and "preprocess" not in d and "preprocess_p" not in d
    assert OptimizerConfig.from_dict(d) == CFG
    assert OptimizerConfig().to_dict()["architecture"] == "lstm"
    with pytest.raises(ConfigError, match="architecture"):
        OptimizerConfig.from_dict({"architecture": "transformer"})
    with pytest.raises(ConfigError, match="preprocess applies to the lstm"):
        OptimizerConfig(architecture="feature_mlp", preprocess="none")


def test_a_time_horizon_belongs_to_the_feature_mlp_and_rides_in_its_config():
    cfg = OptimizerConfig(architecture="feature_mlp", hidden_size=8, num_layers=2, time_horizon=500)
    assert cfg.to_dict()["time_horizon"] == 500 and OptimizerConfig.from_dict(cfg.to_dict()) == cfg
    assert "time_horizon" not in CFG.to_dict() and "time_horizon" not in OptimizerConfig().to_dict()
    with pytest.raises(ConfigError, match="time_horizon applies to the feature_mlp"):
        OptimizerConfig(time_horizon=500)
    for bad in (0, -3, 2.5, True, "500", 10**7):
        with pytest.raises(ConfigError, match="time_horizon must be"):
            OptimizerConfig(architecture="feature_mlp", time_horizon=bad)


def test_warmup_belongs_to_the_feature_mlp_and_rides_in_its_config():
    cfg = dataclasses.replace(CFG, warmup=True)
    assert cfg.to_dict()["warmup"] is True and OptimizerConfig.from_dict(cfg.to_dict()) == cfg
    assert "warmup" not in CFG.to_dict() and "warmup" not in OptimizerConfig().to_dict()
    with pytest.raises(ConfigError, match="warmup applies to the feature_mlp"):
        OptimizerConfig(warmup=True)
    for bad in (1, "yes", 0.5):
        with pytest.raises(ConfigError, match="warmup must be"):
            OptimizerConfig(architecture="feature_mlp", warmup=bad)


def test_warmup_caps_the_step_size_factor_over_the_first_steps():
    """Weights whose magnitude output is at its top (e^3.5) and whose direction is Adam's: with warmup the
    factor at step t is exp(3.5 (1 - 0.9^t)) instead: 1.42 at the first step, within 1% of e^3.5 by the 60th."""
    weights = {k: torch.zeros_like(v) for k, v in trained_like().items()}
    weights["head.bias"] = torch.tensor([0.0, 50.0])   # tanh(50) = 1: the largest factor the rule can take
    g = torch.Generator().manual_seed(3)
    grads_seq = [torch.randn(20, generator=g) for _ in range(60)]
    plain, _ = run(weights, grads_seq)
    warm, _ = run(weights, grads_seq, cfg=dataclasses.replace(CFG, warmup=True))
    for t, (u, w) in enumerate(zip(plain, warm, strict=True), start=1):
        torch.testing.assert_close(w, u * math.exp(3.5 * (1 - 0.9**t) - 3.5), rtol=1e-5, atol=0)


def test_past_its_time_horizon_the_rule_sees_the_time_it_saw_last():
    """Clamped at 50 steps, a state 5000 steps old shows the MLP the time features of one 50 steps old, and
    the same gradient features as without the clamp; before the horizon the clamp changes nothing."""
    g = torch.Generator().manual_seed(8)
    moments = torch.randn(30, 4, generator=g).abs() * 0.1
    betas = torch.tensor([*feature_mlp.BETA1S, feature_mlp.BETA2])
    grads = torch.randn(30, generator=g)

    def features(t, horizon):
        state = torch.cat([moments, (1 - betas ** t).expand(30, 4)], dim=1)
        return feature_mlp.inputs(grads, state, horizon)[0]

    old, young = features(5000, 50), features(50, 50)
    assert torch.equal(old[:, 4:], young[:, 4:])
    assert torch.equal(old[:, :4], features(5000, None)[:, :4])
    assert not torch.allclose(features(5000, None)[:, 4:], young[:, 4:])
    assert torch.equal(features(20, 50), features(20, None))
    # And it reaches the updates: the clamped rule steps differently from the unclamped one that far out.
    clamped = OptimizerConfig(**{**CFG.__dict__, "time_horizon": 50})
    state = torch.cat([moments, (1 - betas ** 5000).expand(30, 4)], dim=1)
    with torch.no_grad():
        u_clamped = step(clamped, trained_like(), grads, LSTMState(state))[0]
        u_free = step(CFG, trained_like(), grads, LSTMState(state))[0]
    assert not torch.allclose(u_clamped, u_free)


def test_the_servers_in_place_step_holds_the_time_features_too():
    """Sessions step through kernel.step_inference_ (in blocks, into the session's buffers): past the
    horizon it gives the clamped rule's updates, not the unclamped one's."""
    from service.lopt.kernel import step_inference_

    weights = trained_like()
    clamped = OptimizerConfig(**{**CFG.__dict__, "time_horizon": 50})
    betas = torch.tensor([*feature_mlp.BETA1S, feature_mlp.BETA2])
    g = torch.Generator().manual_seed(9)
    hc = torch.cat([torch.randn(40, 4, generator=g).abs(), (1 - betas ** 3000).expand(40, 4)], dim=1)
    grads = torch.randn(40, generator=g)
    expected = feature_mlp.step(weights, grads, hc, CFG.output_scale, CFG.num_layers, 50)
    free = feature_mlp.step(weights, grads, hc, CFG.output_scale, CFG.num_layers)
    out_state, out_updates = torch.empty_like(hc), torch.empty(40)
    step_inference_(clamped, weights, grads, LSTMState(hc.clone()), out_state=out_state, out_updates=out_updates)
    assert torch.equal(out_updates, expected[0]) and torch.equal(out_state, expected[1])
    assert not torch.allclose(out_updates, free[0])


def test_a_checkpoint_round_trips_and_refuses_weights_of_the_other_architecture():
    ckpt = Checkpoint(CFG, trained_like())
    back = Checkpoint.from_bytes(ckpt.to_bytes())
    assert back.config == CFG and all(torch.equal(back.weights[k], v) for k, v in ckpt.weights.items())
    lstm_weights = {k: v.detach() for k, v in CoordinatewiseLSTM(OptimizerConfig()).weights().items()}
    with pytest.raises(CheckpointError, match="architecture"):
        Checkpoint(CFG, lstm_weights)


# Reference values from the LSTM as it was before the second architecture came. Not a hash of the bytes: the
# last bits of a matmul differ between CPUs (AVX-512 or not), which once made a digest test fail on CI alone.
@pytest.mark.parametrize(("name", "first_updates", "abs_updates", "abs_state"), [
    ("quadratic-lstm", [-0.07775601, -0.04412984, 0.018459, -0.01486636, 0.01499649, 0.08422601],
     17.280508041381836, 3552.04541015625),
    ("digits-mlp-lstm", [-0.0006899004, -0.002652264, 0.04307363, -0.01259783, 0.04584894, 0.06798869],
     9.238588333129883, 4452.41552734375),
])
def test_the_shipped_lstms_still_make_the_same_updates(name, first_updates, abs_updates, abs_state):
    """The LSTM's definition (what meta-training and the kernels are held to) gives the updates it gave before
    the second architecture came, to float32 rounding."""
    from pathlib import Path

    ckpt = Checkpoint.load(Path(__file__).resolve().parents[2] / "service" / "pretrained" / name)
    g = torch.Generator().manual_seed(11)
    state = init(ckpt.config, 257)
    with torch.no_grad():
        for _ in range(3):
            u, state = step_autograd(ckpt.config, ckpt.weights, torch.randn(257, generator=g), state)
    assert u[:6].tolist() == pytest.approx(first_updates, rel=1e-5, abs=1e-8)
    assert float(u.abs().sum()) == pytest.approx(abs_updates, rel=1e-5)
    assert float(state.hc.abs().sum()) == pytest.approx(abs_state, rel=1e-5)


def test_the_step_memory_is_a_ninth_float_an_eighth_feature_and_a_third_output():
    assert MEMORY.state_shape(5) == (5, 9) and init(MEMORY, 5).hc.shape == (5, 9) and MEMORY.input_size == 8
    shapes = {k: tuple(v.shape) for k, v in trained_like(cfg=MEMORY).items()}
    assert shapes["mlp.0.weight"] == (8, 8) and shapes["head.weight"] == (3, 8) and shapes["head.bias"] == (3,)
    with pytest.raises(CheckpointError, match="config implies"):
        Checkpoint(MEMORY, trained_like())
    with pytest.raises(ValueError, match="state has shape"):
        step(MEMORY, trained_like(cfg=MEMORY), torch.zeros(5), init(CFG, 5))


def test_the_step_memory_multiplies_the_step_by_its_exponential():
    """With the output layer at zero the memory does not move, and a memory of s makes every update e^s
    times the rule's with none: the update's log size is the instantaneous factor plus s."""
    weights = {k: torch.zeros_like(v) if k.startswith("head.") else v for k, v in trained_like(cfg=MEMORY).items()}
    g = torch.Generator().manual_seed(11)
    grads, moments = torch.randn(30, generator=g), torch.randn(30, 8, generator=g).abs() * 0.3
    memory = torch.linspace(-3, 3, 30).unsqueeze(1)
    with torch.no_grad():
        u, new = step(MEMORY, weights, grads, LSTMState(torch.cat([moments, memory], dim=1)))
        u0, _ = step(MEMORY, weights, grads, LSTMState(torch.cat([moments, torch.zeros(30, 1)], dim=1)))
    assert torch.equal(new.hc[:, 8:], memory)
    torch.testing.assert_close(u, u0 * memory.squeeze(1).exp(), rtol=1e-5, atol=0)


def test_the_step_memory_moves_at_most_its_rate_and_stays_in_range():
    """Whatever the weights, the memory moves by at most 0.1 a step and stays within ±3; pushed up at full
    rate it reaches 3 on the 30th step and stays there, pushed down -3."""
    wild = {k: v * 30 for k, v in trained_like(cfg=MEMORY).items()}
    g = torch.Generator().manual_seed(12)
    grads_seq = [torch.randn(100, generator=g) for _ in range(80)]
    for sign in (1.0, -1.0, None):
        weights = dict(wild)
        if sign is not None:   # the third output at tanh(±50) = ±1 whatever the features
            weights["head.weight"] = wild["head.weight"].clone()
            weights["head.weight"][2] = 0
            weights["head.bias"] = torch.tensor([0.0, 0.0, 50.0 * sign])
        state, before = init(MEMORY, 100), torch.zeros(100)
        for t, x in enumerate(grads_seq, start=1):
            with torch.no_grad():
                _, state = step(MEMORY, weights, x, state)
            memory = state.hc[:, 8]
            assert (memory - before).abs().max() <= feature_mlp.MEMORY_RATE + 1e-6
            assert memory.abs().max() <= feature_mlp.MEMORY_RANGE
            if sign is not None:
                torch.testing.assert_close(memory, torch.full((100,), sign * min(0.1 * t, 3.0)), rtol=0, atol=1e-5)
            before = memory


@pytest.mark.parametrize(("name", "cfg"), [("step_memory", MEMORY), ("relative_correction", RELATIVE),
                                           ("correction_warmup", WARM_CORRECTION), ("memory_up_only", MEMORY_UP)])
def test_its_options_belong_to_the_feature_mlp_and_ride_in_its_config(name, cfg):
    assert cfg.to_dict()[name] is True and OptimizerConfig.from_dict(cfg.to_dict()) == cfg
    assert name not in CFG.to_dict() and name not in OptimizerConfig().to_dict()
    with pytest.raises(ConfigError, match=f"{name} applies to the feature_mlp"):
        OptimizerConfig(**{name: True})
    for bad in (1, "yes"):
        with pytest.raises(ConfigError, match=f"{name} must be"):
            OptimizerConfig(architecture="feature_mlp", **{name: bad})


def test_a_relative_correction_is_scaled_by_the_gradients_signal():
    """With the direction output at its top (+3) and the step-size output at zero, the update is
    −η (Adam's direction + 3), or with the relative correction −η (Adam's direction + 3 min(|m̂_0.99|·r, 1))."""
    weights = {k: torch.zeros_like(v) for k, v in trained_like().items()}
    weights["head.bias"] = torch.tensor([300.0, 0.0])   # tanh(300 / 3) = 1
    g = torch.Generator().manual_seed(13)
    grads = torch.randn(40, generator=g)
    hc = torch.cat([torch.randn(40, 3, generator=g), torch.rand(40, 1, generator=g) + 0.1,
                    torch.full((40, 4), 0.5)], dim=1)
    features, adam, _ = feature_mlp.inputs(grads, hc)
    signal = features[:, 3].abs().clamp(max=1.0)
    assert (signal < 1).any() and (signal == 1).any()
    with torch.no_grad():
        plain = step(CFG, weights, grads, LSTMState(hc))[0]
        relative = step(RELATIVE, weights, grads, LSTMState(hc))[0]
    torch.testing.assert_close(plain, -CFG.output_scale * (adam + 3), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(relative, -CFG.output_scale * (adam + 3 * signal), rtol=1e-5, atol=1e-9)


def test_a_correction_warmup_scales_the_correction_by_the_filled_share_of_the_momentum():
    """With the direction output at its top (+3) and the step-size output at zero, the update at step t is
    −η (Adam's direction + 3 (1 − 0.9^t)) with the correction's warm-up: 0.3 at the first step."""
    weights = {k: torch.zeros_like(v) for k, v in trained_like().items()}
    weights["head.bias"] = torch.tensor([300.0, 0.0])   # tanh(300 / 3) = 1
    g = torch.Generator().manual_seed(14)
    grads_seq = [torch.randn(30, generator=g) for _ in range(12)]
    plain, warm = init(CFG, 30), init(WARM_CORRECTION, 30)
    for t, grads in enumerate(grads_seq, start=1):
        _, adam, _ = feature_mlp.inputs(grads, plain.hc)
        with torch.no_grad():
            u_plain, plain = step(CFG, weights, grads, plain)
            u_warm, warm = step(WARM_CORRECTION, weights, grads, warm)
        torch.testing.assert_close(u_plain, -CFG.output_scale * (adam + 3), rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(u_warm, -CFG.output_scale * (adam + 3 * (1 - 0.9 ** t)), rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(warm.hc, plain.hc)


def test_a_memory_that_only_rises_stays_between_zero_and_its_top():
    """The memory's output held at ±1: with memory_up_only it rises by 0.1 a step to 3 or stays at 0, where
    the plain memory falls to −3; it needs the step memory."""
    weights = {k: torch.zeros_like(v) for k, v in trained_like(cfg=MEMORY).items()}
    g = torch.Generator().manual_seed(15)
    grads_seq = [torch.randn(20, generator=g) for _ in range(40)]
    for sign in (1.0, -1.0):
        weights["head.bias"] = torch.tensor([0.0, 0.0, 50.0 * sign])   # tanh(±50) = ±1
        up, plain = init(MEMORY_UP, 20), init(MEMORY, 20)
        for t, grads in enumerate(grads_seq, start=1):
            with torch.no_grad():
                u_up, up = step(MEMORY_UP, weights, grads, up)
                u_plain, plain = step(MEMORY, weights, grads, plain)
            want = min(0.1 * t, 3.0) if sign > 0 else 0.0
            torch.testing.assert_close(up.hc[:, 8], torch.full((20,), want), rtol=0, atol=1e-5)
            torch.testing.assert_close(plain.hc[:, 8], torch.full((20,), sign * min(0.1 * t, 3.0)), rtol=0, atol=1e-5)
            if sign > 0:
                torch.testing.assert_close(u_up, u_plain)
            else:   # e^0 against e^(−0.1 t): the plain memory's step is smaller by exactly that factor
                torch.testing.assert_close(u_plain, u_up * math.exp(-min(0.1 * t, 3.0)), rtol=1e-5, atol=1e-12)
    with pytest.raises(ConfigError, match="memory_up_only applies to a feature_mlp with step_memory"):
        dataclasses.replace(CFG, memory_up_only=True)
