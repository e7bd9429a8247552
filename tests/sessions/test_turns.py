"""A session's requests take turns in arrival order, and a session no one is using holds no lock."""

from __future__ import annotations

import asyncio

import pytest

from service.sessions.turns import SessionTurns


async def test_requests_on_one_session_run_one_at_a_time_in_arrival_order():
    turns, ran, inside = SessionTurns(), [], []

    async def request(session: str, i: int) -> None:
        async with turns.of(session):
            inside.append(session)
            assert inside.count(session) == 1   # nobody else on this session holds a turn
            await asyncio.sleep(0.001 * (5 - i))   # the earlier ones take longer: order must still hold
            ran.append((session, i))
            inside.remove(session)

    await asyncio.gather(*(request(s, i) for i in range(5) for s in ("a", "b")))
    assert [i for s, i in ran if s == "a"] == list(range(5))
    assert [i for s, i in ran if s == "b"] == list(range(5))
    assert len(turns) == 0   # every entry left with its last user


async def test_other_sessions_do_not_wait():
    turns = SessionTurns()
    async with turns.of("a"):
        await asyncio.wait_for(_enter(turns, "b"), timeout=1)
        assert len(turns) == 1


async def _enter(turns: SessionTurns, session: str) -> None:
    async with turns.of(session):
        pass


async def test_a_request_cancelled_while_waiting_leaves_the_turns_as_they_were():
    turns = SessionTurns()
    order: list[str] = []
    holding, release, queued = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with turns.of("a"):
            holding.set()
            await release.wait()
            order.append("first")

    async def wait_for_a_turn() -> None:
        queued.set()   # a task runs on until it blocks: when the test next runs, this one waits for the lock
        async with turns.of("a"):
            order.append("cancelled")

    first = asyncio.create_task(hold())
    await holding.wait()
    waiting = asyncio.create_task(wait_for_a_turn())
    await queued.wait()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting

    async def third() -> None:
        async with turns.of("a"):
            order.append("third")

    later = asyncio.create_task(third())
    release.set()
    await asyncio.gather(first, later)
    assert order == ["first", "third"] and len(turns) == 0


async def test_an_error_inside_a_turn_releases_it():
    turns = SessionTurns()
    with pytest.raises(RuntimeError):
        async with turns.of("a"):
            raise RuntimeError("boom")
    assert len(turns) == 0
    await asyncio.wait_for(_enter(turns, "a"), timeout=1)
