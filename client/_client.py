"""Client and AsyncClient: the same API, one blocking and one async. They differ only in how they send.

    from client import Client
    with Client() as l2o:                       # L2O_URL / L2O_API_KEY, else the embedded server's key file
        session = l2o.sessions.create("general-mlp", {"w": [3]})
        result = l2o.sessions.step(session.id, step=0, grads={"w": [0.1, -0.2, 0.3]})
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import anyio
import httpx

from client._base import BaseClient, RequestOptions, limits
from client._constants import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_RETRIES
from client.resources.jobs import AsyncJobs, Jobs
from client.resources.optimizers import AsyncOptimizers, Optimizers
from client.resources.sessions import AsyncSessions, Sessions


class Client(BaseClient):
    """A blocking client on an httpx.Client: kept-alive connections, at most `max_connections` to the
    server at once (more requests wait up to the pool timeout for one). `http_client` (any httpx.Client,
    e.g. a TestClient) or `transport` replace that pool; the client closes only what it created."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float | httpx.Timeout | None = None, max_retries: int = DEFAULT_MAX_RETRIES,
                 headers: Mapping[str, str] | None = None, http_client: httpx.Client | None = None,
                 transport: httpx.BaseTransport | None = None,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        super().__init__(base_url, api_key, timeout=timeout, max_retries=max_retries, headers=headers)
        pool = limits(max_connections)   # refused even where a given client or transport means it goes unused
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(transport=transport, limits=pool, follow_redirects=True)
        self.optimizers = Optimizers(self)
        self.sessions = Sessions(self)
        self.jobs = Jobs(self)

    def send(self, options: RequestOptions) -> httpx.Response:
        """Send with retries; the response of a success (unread when streaming), else the error raised."""
        attempt = 0
        while True:
            request = self.build_request(self._http, options)
            try:
                response = self._http.send(request, stream=self.streams(options))
                if options.into is not None and response.is_success:
                    options.into.read(response)  # inside the try: an answer cut off midway is retried
            except httpx.TransportError as exc:
                if not self.should_retry(options, attempt, error=exc):
                    raise self.connection_error(exc, request) from exc
                delay = self.retry_delay(attempt)
                self.log_retry(options, attempt, delay, type(exc).__name__)
            else:
                if response.is_success or self.done_before(options, attempt, response):
                    return response
                response.read()
                response.close()
                if not self.should_retry(options, attempt, response=response):
                    raise self.status_error(response, options)
                delay = self.retry_delay(attempt, response)
                self.log_retry(options, attempt, delay, f"HTTP {response.status_code}")
            time.sleep(delay)
            attempt += 1

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Any API call, for routes the resources do not cover: `client.request("GET", "/readyz")`."""
        return self.send(RequestOptions(method, path, **kwargs))

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(BaseClient):
    """The async client on an httpx.AsyncClient: the same resources, each call awaited."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float | httpx.Timeout | None = None, max_retries: int = DEFAULT_MAX_RETRIES,
                 headers: Mapping[str, str] | None = None, http_client: httpx.AsyncClient | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        super().__init__(base_url, api_key, timeout=timeout, max_retries=max_retries, headers=headers)
        pool = limits(max_connections)
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(transport=transport, limits=pool, follow_redirects=True)
        self.optimizers = AsyncOptimizers(self)
        self.sessions = AsyncSessions(self)
        self.jobs = AsyncJobs(self)

    async def send(self, options: RequestOptions) -> httpx.Response:
        attempt = 0
        while True:
            request = self.build_request(self._http, options)
            try:
                response = await self._http.send(request, stream=self.streams(options))
                if options.into is not None and response.is_success:
                    await options.into.aread(response)
            except httpx.TransportError as exc:
                if not self.should_retry(options, attempt, error=exc):
                    raise self.connection_error(exc, request) from exc
                delay = self.retry_delay(attempt)
                self.log_retry(options, attempt, delay, type(exc).__name__)
            else:
                if response.is_success or self.done_before(options, attempt, response):
                    return response
                await response.aread()
                await response.aclose()
                if not self.should_retry(options, attempt, response=response):
                    raise self.status_error(response, options)
                delay = self.retry_delay(attempt, response)
                self.log_retry(options, attempt, delay, f"HTTP {response.status_code}")
            await anyio.sleep(delay)
            attempt += 1

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.send(RequestOptions(method, path, **kwargs))

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
