"""Fixtures for the SDK tests: the real app on SQLite, a sync Client through a TestClient, an AsyncClient
through httpx's ASGI transport, and a registered optimizer small enough to keep every test fast.

The SDK's behaviour does not depend on the database, so these run on SQLite only (the registry and session
tests cover PostgreSQL and Redis).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from client import AsyncClient, Client
from tests.conftest import checkpoint_bytes

BASE_URL = "http://testserver"
OPTIMIZER = "tiny"


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries wait milliseconds, not seconds, so tests that exercise them stay fast."""
    monkeypatch.setattr("client._constants.INITIAL_RETRY_DELAY", 0.001)


@pytest.fixture
def settings(tmp_path: Path, sqlite_migrated: Path):
    from service.config import Settings

    db = tmp_path / "l2o.db"
    shutil.copyfile(sqlite_migrated, db)
    (tmp_path / "pretrained").mkdir(exist_ok=True)
    return Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{db}", pretrained_dir=tmp_path / "pretrained",
                    job_poll_s=0.05, job_lease_s=1.0, job_device="cpu")


@pytest.fixture
def http(app) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def ckpt() -> bytes:
    return checkpoint_bytes(hidden_size=4, num_layers=1, seed=7)


@pytest.fixture
def l2o(http: TestClient, admin_key: str, ckpt: bytes) -> Iterator[Client]:
    """A sync client holding every scope, after `tiny` version 1 is registered."""
    with Client(BASE_URL, admin_key, http_client=http) as c:
        c.optimizers.upload(OPTIMIZER, ckpt)
        yield c


@pytest.fixture
def make_client(http: TestClient, make_key) -> Callable[..., Client]:
    """make_client(*scopes, transport=None) -> a Client with a new key of those scopes."""

    def make(*scopes: str, transport: httpx.BaseTransport | None = None, **kwargs) -> Client:
        key = make_key(*scopes)
        if transport is not None:
            return Client(BASE_URL, key, transport=transport, **kwargs)
        return Client(BASE_URL, key, http_client=http, **kwargs)

    return make


@pytest.fixture
async def async_l2o(app, admin_key: str, ckpt: bytes) -> AsyncIterator[AsyncClient]:
    """An AsyncClient over httpx's ASGI transport, the app's lifespan running around it."""
    async with app.router.lifespan_context(app):
        async with AsyncClient(BASE_URL, admin_key, transport=httpx.ASGITransport(app=app)) as c:
            await c.optimizers.upload(OPTIMIZER, ckpt)
            yield c


class LoseAnswers(httpx.BaseTransport):
    """Passes each request to the app, then, for the first `count` requests `match` accepts, throws the
    answer away and fails as a dropped connection would: the server did the work, the client never heard."""

    def __init__(self, app_client: TestClient, match: Callable[[httpx.Request], bool], count: int = 1) -> None:
        self.app_client = app_client
        self.match = match
        self.left = count
        self.delivered: list[httpx.Response] = []
        self.lost: list[httpx.Response] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.app_client.send(request)
        if self.left > 0 and self.match(request):
            self.left -= 1
            self.lost.append(response)
            raise httpx.ReadError("connection reset before the answer arrived", request=request)
        self.delivered.append(response)
        return httpx.Response(response.status_code, headers=response.headers, content=response.content)
