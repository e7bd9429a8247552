"""The pointwise step (what a GPU runs, compiled): agreement with step_autograd, bits that do not depend
on the batch, and the compiled kernel behind L2O_KERNEL=compiled (compiled here for the CPU, the same
graph a GPU compiles)."""

import pytest
import torch

from service.lopt import CoordinatewiseLSTM, LSTMState, OptimizerConfig, kernel
from service.lopt.functional import step_autograd
from service.lopt.kernel import Segment
from service.lopt.pointwise import step_pointwise_

CONFIGS = [
    OptimizerConfig(),
    OptimizerConfig(hidden_size=7, num_layers=1, preprocess="none", output_scale=-0.5),
    OptimizerConfig(hidden_size=8, num_layers=3, preprocess_p=5.0),
]


def make(config, seed=0):
    net = CoordinatewiseLSTM(config, generator=torch.Generator().manual_seed(seed))
    return {k: v.detach() for k, v in net.weights().items()}


def inputs(config, n, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(n, generator=g) * 10 ** (torch.rand(n, generator=g) * 8 - 6)
    hc = torch.randn((n, config.num_layers, 2, config.hidden_size), generator=g) * 0.5
    return grads, hc.to(dtype)


def pointwise(config, w, grads, hc):
    out_state, out_updates = torch.full_like(hc, 7.0), torch.full((grads.shape[0],), 7.0)
    step_pointwise_(config, w, grads, hc, out_state, out_updates)
    return out_updates, out_state


@pytest.mark.parametrize("config", CONFIGS, ids=["paper", "one-layer-raw", "three-layers"])
def test_pointwise_step_matches_step_autograd(config):
    w = make(config)
    grads, hc = inputs(config, 3000)
    updates, state = pointwise(config, w, grads, hc)
    ref_updates, ref_state = step_autograd(config, w, grads, LSTMState(hc))
    torch.testing.assert_close(updates, ref_updates, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state, ref_state.hc, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_state_is_read_and_written_in_its_dtype(dtype):
    config = OptimizerConfig()
    w = make(config)
    grads, hc = inputs(config, 500, dtype=dtype)
    updates, state = pointwise(config, w, grads, hc)
    wide_updates, wide_state = pointwise(config, w, grads, hc.to(torch.float32))
    assert state.dtype == dtype
    assert torch.equal(updates, wide_updates)             # computed in float32...
    assert torch.equal(state, wide_state.to(dtype))       # ...and rounded once, on the way out


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_a_coordinates_bits_do_not_depend_on_its_neighbours(monkeypatch, device):
    """The compiled step, as it runs: eager torch on a CPU need not hold this (its vectorised loops
    and their scalar tails round differently), which is why the CPU's step is compiled or native."""
    monkeypatch.setenv("L2O_KERNEL", "compiled")
    config = OptimizerConfig()
    w = {k: v.to(device) for k, v in make(config).items()}
    grads, hc = (t.to(device) for t in inputs(config, 2000, seed=3))
    updates, state = kernel.step_inference(config, w, grads, LSTMState(hc))
    for start, stop in [(0, 1), (1, 2), (777, 1234), (1999, 2000), (5, 2000)]:
        u, s = kernel.step_inference(config, w, grads[start:stop], LSTMState(hc[start:stop]))
        assert torch.equal(u, updates[start:stop]) and torch.equal(s.hc, state.hc[start:stop])


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_kernel_agrees_and_batches_bit_identically(monkeypatch, device):
    """One compile (dynamic shapes) serves every size; segments of any length batch with no padding.
    On a GPU machine this runs on the GPU too, where the compiled step is the default."""
    if device == "cpu":
        monkeypatch.setenv("L2O_KERNEL", "compiled")
    config = OptimizerConfig()
    w = {k: v.to(device) for k, v in make(config).items()}
    assert kernel.backend(config, device) == "compiled"
    sizes = [1000, 17, kernel.BLOCK + 3, 33, 100_003]
    batch = [tuple(t.to(device) for t in inputs(config, n, seed)) for seed, n in enumerate(sizes)]
    alone = [kernel.step_inference(config, w, g, LSTMState(hc)) for g, hc in batch]
    for (g, hc), (updates, state) in zip(batch, alone, strict=True):
        ref_updates, ref_state = step_autograd(config, w, g, LSTMState(hc))
        torch.testing.assert_close(updates, ref_updates, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(state.hc, ref_state.hc, rtol=1e-5, atol=1e-6)
    segments = [Segment(g, LSTMState(hc), torch.full_like(hc, 7.0), torch.full((g.shape[0],), 7.0, device=device))
                for g, hc in batch]
    kernel.step_inference_many(config, w, segments)
    for seg, (updates, state) in zip(segments, alone, strict=True):
        assert torch.equal(seg.out_updates, updates) and torch.equal(seg.out_state, state.hc)
