"""Client and AsyncClient: the same API, one blocking and one async. They differ only in how they send.

    from client import Client
    with Client() as l2o:                       # L2O_URL / L2O_API_KEY, else the embedded server's key file
        session = l2o.sessions.create("quadratic-lstm", {"w": [3]})
        result = l2o.sessions.step(session.id, step=0, grads={"w": [0.1, -0.2, 0.3]})
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Mapping
from typing import Any

import anyio
import httpx

from client._base import BaseClient, RequestOptions
from client._constants import DEFAULT_MAX_RETRIES
from client._http11 import MAX_CONNECTIONS_PER_HOST, Http11Transport, check_max_connections
from client._http11_async import AsyncHttp11Transport, _on_asyncio
from client.resources.jobs import AsyncJobs, Jobs
from client.resources.optimizers import AsyncOptimizers, Optimizers
from client.resources.sessions import AsyncSessions, Sessions


class Client(BaseClient):
    """A blocking client. `http_client` (any httpx.Client, e.g. a TestClient) or `transport` replace the
    default connection pool (Http11Transport: kept-alive sockets, bodies read in one piece, at most
    `max_connections` to the server at once, more requests waiting up to the pool timeout for one); the
    client closes only what it created."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float | httpx.Timeout | None = None, max_retries: int = DEFAULT_MAX_RETRIES,
                 headers: Mapping[str, str] | None = None, http_client: httpx.Client | None = None,
                 transport: httpx.BaseTransport | None = None,
                 max_connections: int = MAX_CONNECTIONS_PER_HOST) -> None:
        super().__init__(base_url, api_key, timeout=timeout, max_retries=max_retries, headers=headers)
        self._owns_http = http_client is None
        url = httpx.URL(self.base_url)
        # Through a proxy named in the environment, httpx's own transport goes (it honours those variables).
        check_max_connections(max_connections)   # refused even where httpx's own pool is used instead
        pooled = http_client is None and transport is None and not _proxied(url)
        own = Http11Transport(max_connections=max_connections) if pooled else None
        self._http = http_client or httpx.Client(transport=transport or own, follow_redirects=True)
        # Lean requests need this client's own transport and a plain http:// server.
        self._lean = own if own is not None and url.scheme == "http" else None
        self.optimizers = Optimizers(self)
        self.sessions = Sessions(self)
        self.jobs = Jobs(self)

    def send(self, options: RequestOptions) -> httpx.Response:
        """Send with retries; the response of a success (unread when streaming), else the error raised."""
        attempt = 0
        while True:
            lean = options.lean and self._lean is not None
            request = None if lean else self._http.build_request(**self.request_args(options))
            try:
                response = self._send_lean(options) if lean else self._http.send(request, stream=options.stream)
            except httpx.TransportError as exc:
                if not self.should_retry(options, attempt, error=exc):
                    raise self.connection_error(exc, request or self._http.build_request(
                        **self.request_args(options))) from exc
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

    def _send_lean(self, options: RequestOptions) -> httpx.Response:
        """The request written straight to the transport: the same bytes httpx would send, without the
        objects it builds around them. An error answer gets its httpx.Request attached afterwards."""
        host, port, head, body = self.lean_request(options)
        response = self._lean.send_bytes(host, port, head, body, (options.timeout or self.timeout).as_dict())
        if not response.is_success:
            response.request = self._http.build_request(**self.request_args(options))
        return response

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


def _proxied(url: httpx.URL) -> bool:
    """Whether the environment (HTTP_PROXY, ALL_PROXY, NO_PROXY) sends requests to `url` through a proxy."""
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get(url.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass_environment(url.host)


class AsyncClient(BaseClient):
    """The async client: the same resources, each call awaited; its own pool (AsyncHttp11Transport) keeps
    to `max_connections` per event loop."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float | httpx.Timeout | None = None, max_retries: int = DEFAULT_MAX_RETRIES,
                 headers: Mapping[str, str] | None = None, http_client: httpx.AsyncClient | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 max_connections: int = MAX_CONNECTIONS_PER_HOST) -> None:
        super().__init__(base_url, api_key, timeout=timeout, max_retries=max_retries, headers=headers)
        self._owns_http = http_client is None
        url = httpx.URL(self.base_url)
        check_max_connections(max_connections)   # refused even where httpx's own pool is used instead
        pooled = http_client is None and transport is None and not _proxied(url)
        own = AsyncHttp11Transport(max_connections=max_connections) if pooled else None
        self._http = http_client or httpx.AsyncClient(transport=transport or own, follow_redirects=True)
        self._lean = own if own is not None and url.scheme == "http" else None
        self.optimizers = AsyncOptimizers(self)
        self.sessions = AsyncSessions(self)
        self.jobs = AsyncJobs(self)

    async def send(self, options: RequestOptions) -> httpx.Response:
        attempt = 0
        while True:
            lean = options.lean and self._lean is not None and _on_asyncio()
            request = None if lean else self._http.build_request(**self.request_args(options))
            try:
                response = await self._send_lean(options) if lean else await self._http.send(
                    request, stream=options.stream)
            except httpx.TransportError as exc:
                if not self.should_retry(options, attempt, error=exc):
                    raise self.connection_error(exc, request or self._http.build_request(
                        **self.request_args(options))) from exc
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

    async def _send_lean(self, options: RequestOptions) -> httpx.Response:
        """As Client._send_lean, awaited."""
        host, port, head, body = self.lean_request(options)
        response = await self._lean.send_bytes(host, port, head, body, (options.timeout or self.timeout).as_dict())
        if not response.is_success:
            response.request = self._http.build_request(**self.request_args(options))
        return response

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.send(RequestOptions(method, path, **kwargs))

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
