"""Cross-session batching: one LSTM call for steps that arrive together, each session's bits unchanged."""

from __future__ import annotations

import asyncio

import pytest
import torch

from service.errors import InvalidGradients, StepConflict
from service.lopt import CoordinatewiseLSTM, LSTMState, OptimizerConfig, kernel
from service.lopt.kernel import Segment
from service.sessions import wire
from service.sessions.memory_store import MemoryStore
from service.sessions.service import SessionLimits, SessionService
from service.sessions.wire import StepMessage, WireFormat
from tests.sessions.fakes import FakeVersions

ST = WireFormat.SAFETENSORS
LIMITS = SessionLimits(max_coords=100_000, max_sessions_per_key=64, max_state_bytes=10**9)


def weights(config: OptimizerConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    net = CoordinatewiseLSTM(config, generator=torch.Generator().manual_seed(seed))
    return {k: v.detach() for k, v in net.weights().items()}


def random_inputs(n: int, seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, LSTMState]:
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(n, generator=g) * 10 ** (torch.rand(n, generator=g) * 8 - 6)
    return grads, LSTMState((torch.randn((n, 2, 2, 20), generator=g) * 0.5).to(dtype))


# --- the kernel ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_many_segments_in_one_call_equal_each_segment_alone(monkeypatch, backend, dtype):
    monkeypatch.setenv("L2O_KERNEL", backend)
    config, w = OptimizerConfig(), weights(OptimizerConfig())
    sizes = [1000, 1, 0, 17, kernel.BLOCK + 3, 33]
    inputs = [random_inputs(n, seed, dtype) for seed, n in enumerate(sizes)]
    alone = [kernel.step_inference(config, w, g, s) for g, s in inputs]
    segments = [Segment(g, s, torch.full_like(s.hc, 7.0), torch.full((g.shape[0],), 7.0)) for g, s in inputs]
    kernel.step_inference_many(config, w, segments)
    for (updates, state), seg in zip(alone, segments, strict=True):
        assert torch.equal(seg.out_updates, updates)
        assert torch.equal(seg.out_state, state.hc)


def test_a_segment_may_step_in_place():
    config, w = OptimizerConfig(), weights(OptimizerConfig())
    grads, state = random_inputs(500, 3, torch.float32)
    updates, expected = kernel.step_inference(config, w, grads, state)
    hc = state.hc.clone()
    seg = Segment(grads, LSTMState(hc), hc, torch.empty(500))
    other_grads, other_state = random_inputs(9, 4, torch.float32)
    other = Segment(other_grads, other_state, torch.empty(9, 2, 2, 20), torch.empty(9))
    kernel.step_inference_many(config, w, [seg, other])
    assert torch.equal(hc, expected.hc) and torch.equal(seg.out_updates, updates)


def test_segments_must_share_one_state_dtype():
    config, w = OptimizerConfig(), weights(OptimizerConfig())
    a, b = random_inputs(4, 0, torch.float32), random_inputs(4, 1, torch.bfloat16)
    segments = [Segment(g, s, torch.empty_like(s.hc), torch.empty(4)) for g, s in (a, b)]
    with pytest.raises(ValueError, match="segment 1 has a torch.bfloat16 state"):
        kernel.step_inference_many(config, w, segments)


# --- the step service ---------------------------------------------------------------------------------------

def make_service(batching: bool) -> SessionService:
    return SessionService(MemoryStore(), FakeVersions(), LIMITS, batching=batching)


def grads_at(session: int, step: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * session + step)
    return torch.randn(n, generator=g) * 10 ** (torch.rand(n, generator=g) * 8 - 6)


async def run_sessions(svc: SessionService, sizes: list[int], steps: int) -> list[list[bytes]]:
    """Every session steps `steps` times, all sessions concurrently; the answers' bytes per session."""
    infos = [await svc.create("k", "opt:1" if i % 3 else "opt:2", {"w": [n]}) for i, n in enumerate(sizes)]

    async def drive(i: int) -> list[bytes]:
        answers = []
        for k in range(steps):
            body = wire.encode(StepMessage(k, {"w": grads_at(i, k, sizes[i])}), ST, field="grads")
            answers.append((await svc.step("k", infos[i].id, body, ST)).body)
        return answers

    return await asyncio.gather(*(drive(i) for i in range(len(sizes))))


def test_concurrent_sessions_are_batched_and_get_the_bits_they_get_alone():
    sizes = [1000, 1, 37, 4099, 250, 1000, 8, 600] * 2
    batched = make_service(batching=True)
    together = asyncio.run(run_sessions(batched, sizes, steps=6))
    alone = asyncio.run(run_sessions(make_service(batching=False), sizes, steps=6))
    assert together == alone
    # Batching really happened: fewer LSTM calls than steps, and both optimizer versions were in play.
    assert batched.batcher.requests == len(sizes) * 6
    assert batched.batcher.batches < batched.batcher.requests / 2


def test_a_bad_request_in_a_batch_fails_alone_and_changes_nothing():
    async def scenario():
        svc = make_service(batching=True)
        good = [await svc.create("k", "opt:1", {"w": [50]}) for _ in range(4)]
        bad = await svc.create("k", "opt:1", {"w": [50]})
        before = svc.store.get(bad.id).hc.clone()
        nan = grads_at(0, 0, 50)
        nan[3] = float("nan")
        calls = [svc.step("k", s.id, wire.encode(StepMessage(0, {"w": grads_at(i, 0, 50)}), ST, field="grads"), ST)
                 for i, s in enumerate(good)]
        calls.append(svc.step("k", bad.id, wire.encode(StepMessage(0, {"w": nan}), ST, field="grads"), ST))
        calls.append(svc.step("k", "s_missing", wire.encode(StepMessage(0, {"w": nan}), ST, field="grads"), ST))
        wrong_step = await svc.create("k", "opt:1", {"w": [50]})
        calls.append(svc.step("k", wrong_step.id,
                              wire.encode(StepMessage(5, {"w": grads_at(9, 0, 50)}), ST, field="grads"), ST))
        results = await asyncio.gather(*calls, return_exceptions=True)
        return svc, good, bad, before, results

    svc, good, bad, before, results = asyncio.run(scenario())
    assert all(not isinstance(r, Exception) for r in results[:4])
    assert isinstance(results[4], InvalidGradients)
    assert type(results[5]).__name__ == "SessionNotFound"
    assert isinstance(results[6], StepConflict)
    assert torch.equal(svc.store.get(bad.id).hc, before) and svc.store.get(bad.id).info.step == 0
    assert all(svc.store.get(s.id).info.step == 1 for s in good)


def test_the_memory_store_double_buffers_and_never_touches_the_current_state():
    async def scenario():
        svc = make_service(batching=False)
        info = await svc.create("k", "opt:1", {"w": [64]})
        pointers, states = [], []
        for k in range(5):
            body = wire.encode(StepMessage(k, {"w": grads_at(0, k, 64)}), ST, field="grads")
            await svc.step("k", info.id, body, ST)
            record = svc.store.get(info.id)
            pointers.append(record.hc.data_ptr())
            states.append(record.hc.clone())
            # A refused step (a conflict) after the buffer swap leaves the current state as it was.
            with pytest.raises(StepConflict):
                await svc.step("k", info.id, wire.encode(StepMessage(k + 7, {"w": grads_at(0, k, 64)}), ST,
                                                         field="grads"), ST)
            assert torch.equal(svc.store.get(info.id).hc, states[-1])
        return pointers

    pointers = asyncio.run(scenario())
    # From the second step on, two buffers take turns: no step allocates a new state.
    assert pointers[1] == pointers[3] and pointers[2] == pointers[4] and pointers[1] != pointers[2]


async def test_small_batches_run_on_the_event_loop_and_large_ones_on_a_worker_thread():
    import threading

    from service.sessions.batcher import StepBatcher

    seen = []

    def run_many(requests):
        seen.append(threading.get_ident())
        return [len(r.body) for r in requests]

    class Req:
        def __init__(self, size):
            self.body = b"x" * size

    loop_thread = threading.get_ident()
    batcher = StepBatcher(run_many, inline_bytes=1000)
    assert await batcher.submit(Req(1000)) == 1000
    assert await batcher.submit(Req(1001)) == 1001
    assert seen[0] == loop_thread and seen[1] != loop_thread
