"""A step's body goes out as its pieces and its answer comes into a buffer used again: the bytes on the wire
and the arrays the caller gets are what they were with one joined body."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from client import AnswerBuffer, AsyncClient, Client, _safetensors
from client._body import MAX_PIECE
from tests.client.conftest import BASE_URL

GRADS = {"w": np.arange(3 * MAX_PIECE // 4 + 5, dtype=np.float32), "b": np.float64([1.5, -2.0])}


def answer_for(seen: list[httpx.Request], *, length: bool = True, cut: int = 0):
    """A server that records each request and answers its step with updates = -grads."""
    def handle(request: httpx.Request) -> httpx.Response:
        body = request.read()
        seen.append(request)
        meta, grads = _safetensors.loads(body)
        step = int(meta["step"])
        data = _safetensors.dumps({k: -v for k, v in grads.items()}, {"step": str(step + 1)})
        if len(seen) <= cut:
            raise httpx.ReadError("the answer was lost")
        headers = {"Content-Type": "application/vnd.safetensors"}
        return httpx.Response(200, headers=headers, content=data if length else iter([data[:100], data[100:]]))
    return handle


def test_the_request_is_the_joined_body_with_a_content_length_and_a_retry_sends_it_again():
    seen: list[httpx.Request] = []
    with Client(BASE_URL, "k", transport=httpx.MockTransport(answer_for(seen, cut=1)), max_retries=2) as c:
        result = c.sessions.step("s_1", step=4, grads=GRADS)
    expected = _safetensors.dumps(GRADS, {"step": "4"})
    assert [r.read() for r in seen] == [expected, expected]
    assert all(r.headers["content-length"] == str(len(expected)) for r in seen)
    assert all("transfer-encoding" not in r.headers for r in seen)
    assert result.step == 5 and set(result.updates) == {"w", "b"}
    np.testing.assert_array_equal(result.updates["w"], -GRADS["w"])
    assert result.updates["w"].flags.writeable


def test_the_async_client_sends_the_same_bytes():
    seen: list[httpx.Request] = []

    async def main() -> None:
        async with AsyncClient(BASE_URL, "k", transport=httpx.MockTransport(answer_for(seen))) as c:
            result = await c.sessions.step("s_1", step=0, grads=GRADS)
            np.testing.assert_array_equal(result.updates["b"], -GRADS["b"])

    asyncio.run(main())
    assert seen[0].read() == _safetensors.dumps(GRADS, {"step": "0"})


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "no-length"])
def test_answers_are_read_into_the_same_buffer_step_after_step(length):
    buffer = AnswerBuffer()
    with Client(BASE_URL, "k", transport=httpx.MockTransport(answer_for([], length=length))) as c:
        first = c.sessions.step("s_1", step=0, grads=GRADS, into=buffer)
        np.testing.assert_array_equal(first.updates["w"], -GRADS["w"])
        where = first.updates["w"].__array_interface__["data"][0]
        second = c.sessions.step("s_1", step=1, grads={k: 2 * v for k, v in GRADS.items()}, into=buffer)
    np.testing.assert_array_equal(second.updates["w"], -2 * GRADS["w"])
    assert second.updates["w"].__array_interface__["data"][0] == where  # the same memory, read again
    np.testing.assert_array_equal(first.updates["w"], -2 * GRADS["w"])  # which is why views last one step
    assert bytes(buffer.view) == _safetensors.dumps({k: -2 * v for k, v in GRADS.items()}, {"step": "2"})


def test_a_larger_answer_gets_a_new_buffer_and_leaves_the_last_answer_alone():
    buffer = AnswerBuffer()
    with Client(BASE_URL, "k", transport=httpx.MockTransport(answer_for([]))) as c:
        small = c.sessions.step("s_1", step=0, grads={"w": np.ones(4, np.float32)}, into=buffer)
        large = c.sessions.step("s_1", step=1, grads={"w": np.ones(40_000, np.float32)}, into=buffer)
    np.testing.assert_array_equal(small.updates["w"], -np.ones(4))
    np.testing.assert_array_equal(large.updates["w"], -np.ones(40_000))
