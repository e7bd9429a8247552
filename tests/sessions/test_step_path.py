"""The step path, route -> SessionService.step -> kernel -> store, under concurrency: each session's bits
as when it runs alone, a bad request failing alone, the state double-buffered, small steps on the event
loop and large ones on a worker thread."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from service.errors import InvalidGradients, StepConflict
from service.sessions import wire
from service.sessions.memory_store import MemoryStore
from service.sessions.service import SessionLimits, SessionService
from service.sessions.wire import StepMessage, WireFormat
from tests.sessions.fakes import FakeVersions

ST = WireFormat.SAFETENSORS
LIMITS = SessionLimits(max_coords=100_000, max_sessions_per_key=64, max_state_bytes=10**9)


def make_service() -> SessionService:
    return SessionService(MemoryStore(), FakeVersions(), LIMITS)


def grads_at(session: int, step: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * session + step)
    return torch.randn(n, generator=g) * 10 ** (torch.rand(n, generator=g) * 8 - 6)


def body(step: int, grads: torch.Tensor) -> bytes:
    return wire.encode(StepMessage(step, {"w": grads}), ST, field="grads")


async def run_sessions(svc: SessionService, sizes: list[int], steps: int, together: bool) -> list[list[bytes]]:
    """Every session steps `steps` times, all at once or one session after another; the answers' bytes."""
    infos = [await svc.create("k", "opt:1" if i % 3 else "opt:2", {"w": [n]}) for i, n in enumerate(sizes)]

    async def drive(i: int) -> list[bytes]:
        return [(await svc.step("k", infos[i].id, body(k, grads_at(i, k, sizes[i])), ST)).body for k in range(steps)]

    if together:
        return list(await asyncio.gather(*(drive(i) for i in range(len(sizes)))))
    return [await drive(i) for i in range(len(sizes))]


def test_concurrent_sessions_get_the_bits_they_get_alone():
    sizes = [1000, 1, 37, 40_000, 250, 8]
    together = asyncio.run(run_sessions(make_service(), sizes, steps=4, together=True))
    alone = asyncio.run(run_sessions(make_service(), sizes, steps=4, together=False))
    assert together == alone


def test_a_bad_request_among_concurrent_ones_fails_alone_and_changes_nothing():
    async def scenario():
        svc = make_service()
        good = [await svc.create("k", "opt:1", {"w": [50]}) for _ in range(4)]
        bad = await svc.create("k", "opt:1", {"w": [50]})
        before = svc.store.get(bad.id).hc.clone()
        nan = grads_at(0, 0, 50)
        nan[3] = float("nan")
        calls = [svc.step("k", s.id, body(0, grads_at(i, 0, 50)), ST) for i, s in enumerate(good)]
        calls.append(svc.step("k", bad.id, body(0, nan), ST))
        calls.append(svc.step("k", "s_missing", body(0, nan), ST))
        wrong_step = await svc.create("k", "opt:1", {"w": [50]})
        calls.append(svc.step("k", wrong_step.id, body(5, grads_at(9, 0, 50)), ST))
        return svc, good, bad, before, await asyncio.gather(*calls, return_exceptions=True)

    svc, good, bad, before, results = asyncio.run(scenario())
    assert all(not isinstance(r, Exception) for r in results[:4])
    assert isinstance(results[4], InvalidGradients)
    assert type(results[5]).__name__ == "SessionNotFound"
    assert isinstance(results[6], StepConflict)
    assert torch.equal(svc.store.get(bad.id).hc, before) and svc.store.get(bad.id).info.step == 0
    assert all(svc.store.get(s.id).info.step == 1 for s in good)


def test_the_memory_store_double_buffers_and_never_touches_the_current_state():
    async def scenario():
        svc = make_service()
        info = await svc.create("k", "opt:1", {"w": [64]})
        pointers, states = [], []
        for k in range(5):
            await svc.step("k", info.id, body(k, grads_at(0, k, 64)), ST)
            record = svc.store.get(info.id)
            pointers.append(record.hc.data_ptr())
            states.append(record.hc.clone())
            # A refused step (a conflict) after the buffer swap leaves the current state as it was.
            with pytest.raises(StepConflict):
                await svc.step("k", info.id, body(k + 7, grads_at(0, k, 64)), ST)
            assert torch.equal(svc.store.get(info.id).hc, states[-1])
        return pointers

    pointers = asyncio.run(scenario())
    # From the second step on, two buffers take turns: no step allocates a new state.
    assert pointers[1] == pointers[3] and pointers[2] == pointers[4] and pointers[1] != pointers[2]


async def test_small_steps_run_on_the_event_loop_and_large_ones_on_a_worker_thread():
    svc = make_service()
    small, large = await svc.create("k", "opt:1", {"w": [100]}), await svc.create("k", "opt:1", {"w": [50_000]})
    seen = []
    step = svc._step

    def spy(*args):
        seen.append(threading.get_ident())
        return step(*args)

    svc._step = spy
    await svc.step("k", small.id, body(0, grads_at(0, 0, 100)), ST)
    await svc.step("k", large.id, body(0, grads_at(0, 0, 50_000)), ST)
    assert len(body(0, grads_at(0, 0, 50_000))) > svc.inline_bytes
    assert seen[0] == threading.get_ident() and seen[1] != threading.get_ident()
