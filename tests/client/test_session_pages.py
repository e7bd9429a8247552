"""The SDK's sessions.list() follows the server's pages (Link: rel="next") to the end, sync and async."""

from __future__ import annotations

import asyncio

import httpx

from client import AsyncClient, Client


def session(i: int) -> dict:
    return {"id": f"s_{i}", "optimizer": {"name": "o", "version": 1, "reference": "o:1", "digest": "d"},
            "shapes": {"w": [2]}, "n_coords": 2, "step": 0}


def pages(request: httpx.Request) -> httpx.Response:
    after = int(request.url.params.get("after", "0~s_0").split("~s_")[1])
    page = [session(i) for i in range(after + 1, min(after + 2, 5) + 1)]
    headers = {}
    if page and page[-1]["id"] != "s_5":
        headers["Link"] = f'</v1/sessions?limit=2&after=1.0~{page[-1]["id"]}>; rel="next"'
    return httpx.Response(200, json=page, headers=headers)


def test_list_follows_every_page():
    with Client("http://127.0.0.1:9", "k", transport=httpx.MockTransport(pages), max_retries=0) as c:
        assert [s.id for s in c.sessions.list()] == [f"s_{i}" for i in range(1, 6)]


def test_async_list_follows_every_page():
    async def run() -> list[str]:
        async with AsyncClient("http://127.0.0.1:9", "k", transport=httpx.MockTransport(pages), max_retries=0) as c:
            return [s.id for s in await c.sessions.list()]

    assert asyncio.run(run()) == [f"s_{i}" for i in range(1, 6)]
