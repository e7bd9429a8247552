"""The inference kernel, on both implementations: agreement with step_autograd and nn.LSTMCell, bits
that do not depend on offsets or threads, inputs left alone, the in-place variant, half-precision state,
bad inputs, and the torch path where the native operator cannot be built."""

import logging
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.reference import ReferenceLSTM
from service.lopt import CoordinatewiseLSTM, LSTMState, OptimizerConfig, kernel, native, state_nbytes
from service.lopt.functional import step_autograd
from service.lopt.kernel import step_inference, step_inference_

CONFIGS = [
    OptimizerConfig(),
    OptimizerConfig(hidden_size=7, num_layers=1, preprocess="none", output_scale=-0.5),
    OptimizerConfig(hidden_size=8, num_layers=3, preprocess_p=5.0),
]


@pytest.fixture(params=["native", "torch"])
def backend(request):
    """Runs the test once per implementation. Without a C compiler the native half is skipped, or
    fails when CI=true."""
    if request.param == "native":
        try:
            native.load(OptimizerConfig())
        except native.NativeError as exc:
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"the native kernel cannot be built and CI=true: {exc}")
            pytest.skip(f"the native kernel cannot be built here: {exc}")
    return request.param


def make(config, seed=0):
    net = CoordinatewiseLSTM(config, generator=torch.Generator().manual_seed(seed))
    return {k: v.detach() for k, v in net.weights().items()}


def inputs(config, n, seed=1, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    # Gradients over many magnitudes, so both branches of the preprocessing are taken.
    grads = torch.randn(n, generator=gen) * torch.logspace(-9, 2, n)
    grads = grads[torch.randperm(n, generator=gen)]
    hc = torch.randn((n, config.num_layers, 2, config.hidden_size), generator=gen).to(dtype)
    return grads, LSTMState(hc)


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "h7-l1-none", "h8-l3"])
def test_matches_step_autograd_and_the_lstmcell_reference(backend, config):
    weights = make(config)
    grads, state = inputs(config, 1003)
    assert kernel.backend(config, kernel=backend) == backend
    for _ in range(3):  # several steps, so errors in the state would compound
        u, new = step_inference(config, weights, grads, state, kernel=backend)
        u_auto, s_auto = step_autograd(config, weights, grads, state)
        u_ref, hc_ref = ReferenceLSTM(config, weights).step(grads, state.hc)
        # bench.step's chunked reference writing into given buffers computes the same
        out = (torch.full_like(u_ref, math.nan), torch.full_like(hc_ref, math.nan))
        ReferenceLSTM(config, weights).step(grads, state.hc, chunk=100, out=out)
        torch.testing.assert_close(out, (u_ref, hc_ref), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(u, u_auto.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(new.hc, s_auto.hc.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(u, u_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(new.hc, hc_ref, rtol=1e-5, atol=1e-6)
        state, grads = new, torch.randn(1003)


def require_native(config):
    try:
        native.load(config)
    except native.NativeError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the native kernel cannot be built and CI=true: {exc}")
        pytest.skip(f"the native kernel cannot be built here: {exc}")


def test_native_kernel_is_invariant_to_offset_and_thread_count():
    """Any offset, and any number of torch threads, give the same bits."""
    config = OptimizerConfig()
    require_native(config)
    weights = make(config)
    grads, state = inputs(config, 50_000)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        u1, s1 = step_inference(config, weights, grads, state)
        torch.set_num_threads(3)
        u3, s3 = step_inference(config, weights, grads, state)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(u1, u3) and torch.equal(s1.hc, s3.hc)
    for start, stop in ((5, 6), (7, 40), (1001, 20_017)):
        u, s = step_inference(config, weights, grads[start:stop], LSTMState(state.hc[start:stop]))
        assert torch.equal(u, u1[start:stop]) and torch.equal(s.hc, s1.hc[start:stop])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_kernel_streams_large_outputs_with_the_same_bits(dtype):
    """Outputs past 32 MB are written around the cache; the bits must not change."""
    config = OptimizerConfig()
    require_native(config)
    weights = make(config)
    n = (33 << 20) // state_nbytes(config, 1, dtype) + 5
    grads, state = inputs(config, n, dtype=dtype)
    u, s = step_inference(config, weights, grads, state)
    for start in range(0, n, n // 3 + 1):
        stop = min(start + n // 3 + 1, n)
        u_part, s_part = step_inference(config, weights, grads[start:stop], LSTMState(state.hc[start:stop]))
        assert torch.equal(u[start:stop], u_part) and torch.equal(s.hc[start:stop], s_part.hc)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 instruction sets")
@pytest.mark.parametrize("march", ["x86-64-v3", "x86-64"])
def test_native_kernel_for_narrower_vector_units_agrees_too(march):
    """The same source built for AVX2 (8 lanes) and plain SSE2 (4 lanes), as on older servers."""
    config = OptimizerConfig()
    require_native(config)
    fn = native.load(config, march=march)
    assert fn.lanes == {"x86-64-v3": 8, "x86-64": 4}[march]
    weights = make(config)
    grads, state = inputs(config, 203)
    out, updates = torch.empty_like(state.hc), torch.empty(203)
    fn.run(config, weights, grads, state.hc, out, updates)
    u_auto, s_auto = step_autograd(config, weights, grads, state)
    torch.testing.assert_close(updates, u_auto.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, s_auto.hc.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", kernel.STATE_DTYPES)
def test_step_leaves_its_inputs_unchanged(backend, dtype):
    config = OptimizerConfig()
    weights = make(config)
    grads, state = inputs(config, 300, dtype=dtype)
    before = (grads.clone(), state.hc.clone(), {k: v.clone() for k, v in weights.items()})
    _, new = step_inference(config, weights, grads, state, kernel=backend)
    assert new.hc.data_ptr() != state.hc.data_ptr()
    assert torch.equal(grads, before[0]) and torch.equal(state.hc, before[1])
    assert all(torch.equal(weights[k], v) for k, v in before[2].items())


def test_in_place_variant_writes_into_the_given_buffers(backend):
    config = OptimizerConfig()
    weights = make(config)
    grads, state = inputs(config, 500)
    u_ref, s_ref = step_inference(config, weights, grads, state, kernel=backend)

    buffer, updates = torch.empty_like(state.hc), torch.full((500,), float("nan"))
    u, s = step_inference_(config, weights, grads, state, out_state=buffer, out_updates=updates,
                           kernel=backend)
    assert s.hc is buffer and u is updates
    assert torch.equal(updates, u_ref) and torch.equal(buffer, s_ref.hc)

    own = state.hc.clone()
    u, s = step_inference_(config, weights, grads, LSTMState(own), kernel=backend)
    assert s.hc is own and torch.equal(own, s_ref.hc) and torch.equal(u, u_ref)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_state_computes_in_float32_and_rounds_once(backend, dtype):
    config = OptimizerConfig()
    weights = make(config)
    grads, state = inputs(config, 777, dtype=dtype)
    u, new = step_inference(config, weights, grads, state, kernel=backend)
    u32, new32 = step_inference(config, weights, grads, LSTMState(state.hc.to(torch.float32)), kernel=backend)
    assert new.hc.dtype == dtype
    assert torch.equal(u, u32)
    assert torch.equal(new.hc, new32.hc.to(dtype))
    assert state_nbytes(config, 1, dtype) * 2 == state_nbytes(config, 1) == 320


def test_a_non_finite_gradient_stays_in_its_own_coordinate(backend):
    config = OptimizerConfig()
    weights = make(config)
    grads, state = inputs(config, 64)
    grads[3], grads[40] = float("nan"), float("inf")
    u, new = step_inference(config, weights, grads, state, kernel=backend)
    u_ref, hc_ref = ReferenceLSTM(config, weights).step(grads, state.hc)
    assert torch.equal(u.isnan(), u_ref.isnan()) and u[3].isnan()
    assert torch.equal(new.hc.isnan(), hc_ref.isnan())
    finite = torch.ones(64, dtype=torch.bool)
    finite[[3, 40]] = False
    torch.testing.assert_close(u[finite], u_ref[finite], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(u[40], u_ref[40], rtol=1e-5, atol=1e-6, equal_nan=True)


def test_bad_inputs_are_rejected_with_a_clear_message():
    config = OptimizerConfig()
    weights = make(config)
    grads, state = inputs(config, 10)
    with pytest.raises(ValueError, match="flat"):
        step_inference(config, weights, grads.reshape(2, 5), state)
    with pytest.raises(ValueError, match="shape"):
        step_inference(config, weights, grads[:9], state)
    with pytest.raises(ValueError, match="dtype"):
        step_inference(config, weights, grads, LSTMState(state.hc.double()))
    with pytest.raises(ValueError, match="cell.1.weight"):
        step_inference(config, {**weights, "cell.1.weight": torch.zeros(80, 41)}, grads, state)
    with pytest.raises(ValueError, match="out_state"):
        step_inference_(config, weights, grads, state, out_state=torch.empty_like(state.hc, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="contiguous"):
        step_inference_(config, weights, grads, state, out_state=torch.empty(2, 2, 20, 10).permute(3, 0, 1, 2))
    with pytest.raises(ValueError, match="kernel must be one of"):
        step_inference(config, weights, grads, state, kernel="fast")


def test_warmup_builds_the_operator_for_its_architecture():
    config = OptimizerConfig(hidden_size=12)
    require_native(config)
    assert kernel.warmup(config) > 0
    assert kernel.backend(config) == "native"
    assert native.Arch.of(config).name("native") in [lib for lib in dir(torch.ops) if lib.startswith("l2o_")]
    u, s = step_inference(config, make(config), *inputs(config, 20))
    assert u.shape == (20,) and s.hc.shape == (20, 2, 2, 12)


def test_without_a_compiler_steps_run_on_the_torch_path_and_say_so_once(monkeypatch, caplog):
    from torch.utils import cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension: c++: No such file or directory")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    monkeypatch.setattr(native, "_kernels", {})
    config = OptimizerConfig(hidden_size=6)
    weights = make(config)
    grads, state = inputs(config, 30)
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        assert kernel.backend(config) == "torch"
        u, new = step_inference(config, weights, grads, state)
        kernel.warmup(config)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "native LSTM kernel unavailable, steps run on the torch path"]
    u_auto, s_auto = step_autograd(config, weights, grads, state)
    torch.testing.assert_close(u, u_auto.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(new.hc, s_auto.hc.detach(), rtol=1e-5, atol=1e-6)
    with pytest.raises(native.NativeError, match="No such file"):
        kernel.backend(config, kernel="native")


def test_the_torch_path_steps_in_chunks_with_the_same_results(monkeypatch):
    config = OptimizerConfig()
    weights = make(config)
    grads, state = inputs(config, 1000)
    u, new = step_inference(config, weights, grads, state, kernel="torch")
    monkeypatch.setattr(kernel, "CHUNK", 64)
    u_chunked, new_chunked = step_inference(config, weights, grads, state, kernel="torch")
    torch.testing.assert_close(u_chunked, u, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(new_chunked.hc, new.hc, rtol=1e-6, atol=1e-7)


def test_native_calls_from_many_threads_at_once_each_get_their_own_bits():
    """Calls from several threads at once (the server's worker threads) each get what they get alone."""
    import threading

    config = OptimizerConfig()
    require_native(config)
    kernel_ = native.load(config)
    weights = make(config)
    jobs = [inputs(config, n, seed) for seed, n in enumerate([5000, 4099, 20_000, 777, 12_345, 3000])]
    expected = [step_inference(config, weights, g, s) for g, s in jobs]
    failures = []

    def run(i):
        g, s = jobs[i]
        for _ in range(20):
            out, upd = torch.empty_like(s.hc), torch.empty(g.shape[0])
            kernel_.run(config, weights, g, s.hc, out, upd)
            if not (torch.equal(upd, expected[i][0]) and torch.equal(out, expected[i][1].hc)):
                failures.append(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_native_kernel_works_in_a_forked_child():
    """A forked child (a worker process) steps, on one thread, after the parent has used its own: with the
    parent's OpenMP pool it would hang (see kernel._after_fork_in_child)."""
    config = OptimizerConfig()
    require_native(config)
    weights = make(config)
    grads, state = inputs(config, 9000)
    u, _ = step_inference(config, weights, grads, state)   # the parent's threads are up
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: step, send the updates' bytes, exit without running pytest's teardown
        try:
            assert torch.get_num_threads() == 1
            data = step_inference(config, weights, grads, state)[0].numpy().tobytes()
            with os.fdopen(write, "wb") as out:
                out.write(data)
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as got:
        data = got.read()
    os.waitpid(pid, 0)
    assert torch.equal(torch.frombuffer(bytearray(data), dtype=torch.float32), u)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_process_that_never_stepped_forks_children_that_keep_their_threads():
    """The job processes' forkserver imports the kernel but never steps: its children train on every thread."""
    code = ("import os, torch, service.lopt.kernel\n"
            "torch.set_num_threads(2)\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    os._exit(torch.get_num_threads())\n"
            "print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "2"
