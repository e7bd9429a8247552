"""The body timeout is for bodies that stop arriving, never for a stream that outlives it."""

from __future__ import annotations

import anyio
import pytest

from service.api.body import BodyLimitMiddleware, BodyTimeout


def _scope() -> dict:
    return {"type": "http", "method": "GET", "path": "/v1/jobs/x/events", "headers": []}


async def _discard(message: dict) -> None:
    """The ASGI send: these apps send nothing worth keeping."""


async def test_a_stream_waiting_for_the_client_to_hang_up_outlives_the_body_timeout():
    """Starlette's StreamingResponse listens for the disconnect (a receive) before and while it sends."""
    messages = [{"type": "http.request", "body": b"", "more_body": False}]
    outcome = {}

    async def receive():
        if messages:
            return messages.pop(0)
        await anyio.sleep(0.5)  # the client stays connected longer than the body timeout
        return {"type": "http.disconnect"}

    async def app(scope, receive, send):
        assert (await receive())["type"] == "http.request"
        outcome["second"] = (await receive())["type"]

    await BodyLimitMiddleware(app, limit=1000, timeout_s=0.1)(_scope(), receive, _discard)
    assert outcome["second"] == "http.disconnect"


async def test_a_body_that_stops_arriving_still_times_out():
    messages = [{"type": "http.request", "body": b"x", "more_body": True}]

    async def receive():
        if messages:
            return messages.pop(0)
        await anyio.sleep(5)   # the behaviour under test: no more body for far longer than the timeout
        return {"type": "http.disconnect"}

    async def app(scope, receive, send):
        await receive()
        await receive()

    with pytest.raises(BodyTimeout):
        await BodyLimitMiddleware(app, limit=1000, timeout_s=0.1)(_scope(), receive, _discard)
