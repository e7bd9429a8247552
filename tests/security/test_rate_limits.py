"""Per-key rate limits: a token bucket per API key, 429 rate_limited with Retry-After when it is empty, in
the process with the memory store and in Redis (shared by every API process) with the Redis store."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.api.ratelimit import MemoryRateLimiter, RedisRateLimiter
from service.app import create_app
from service.registry import keys
from tests.security.conftest import bearer, make_settings
from tests.sessions.conftest import REDIS_URL
from tests.sessions.fakes import FakeClock


def new_key(app, *scopes: str) -> str:
    with app.state.db.session() as s:
        _, key = keys.create_key(s, "k", scopes or ("optimize",))
        s.commit()
    return key


def statuses(client: TestClient, key: str, n: int) -> list[int]:
    return [client.get("/v1/optimizers", headers=bearer(key)).status_code for _ in range(n)]


def test_the_bucket_refills_at_the_rate_up_to_the_burst():
    clock = FakeClock(0.0)
    limiter = MemoryRateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(0.5)  # one token every 0.5 s
    assert limiter.acquire("b") == 0.0  # every key has its own bucket
    clock.advance(0.25)
    assert limiter.acquire("a") == pytest.approx(0.25)  # half a token saved up: a quarter second to go
    clock.advance(0.25)
    assert limiter.acquire("a") == 0.0
    clock.advance(3600)  # an idle hour saves up no more than the burst
    assert [limiter.acquire("a") for _ in range(4)][-1] > 0


def test_a_key_over_its_limit_gets_429_with_retry_after(tmp_path, sqlite_migrated):
    settings = make_settings(tmp_path, sqlite_migrated, rate_limit_per_s=5.0, rate_limit_burst=3)
    app = create_app(settings)
    with TestClient(app) as client:
        clock = FakeClock(0.0)
        app.state.rate_limiter.clock = clock  # the limiter the settings made, on a clock the test moves
        key, other = new_key(app), new_key(app)
        assert statuses(client, key, 3) == [200, 200, 200]
        refused = client.get("/v1/optimizers", headers=bearer(key))
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "1"  # whole seconds, rounded up from 0.2
        error = refused.json()["error"]
        assert error["code"] == "rate_limited" and "L2O_RATE_LIMIT_PER_S" in error["message"]
        assert error["detail"]["retry_after_s"] == pytest.approx(0.2)
        assert statuses(client, other, 3) == [200, 200, 200]  # another key's budget is its own
        # Requests without a valid key are refused as such and spend nobody's budget.
        assert client.get("/v1/optimizers", headers=bearer("l2o_wrong")).status_code == 401
        clock.advance(0.2)
        assert statuses(client, key, 2) == [200, 429]
        # Every keyed route is counted, the step included; health and metrics are not.
        clock.advance(0.2)
        assert client.get("/v1/sessions", headers=bearer(key)).status_code == 200
        assert client.post("/v1/sessions/s_x/step", content=b"{}", headers={
            **bearer(key), "Content-Type": "application/json"}).status_code == 429
        assert all(client.get("/healthz").status_code == 200 for _ in range(10))


def test_no_limit_unless_one_is_set(client, admin_headers):
    assert all(client.get("/v1/optimizers", headers=admin_headers).status_code == 200 for _ in range(50))


def test_with_redis_the_api_processes_share_each_keys_budget(tmp_path, sqlite_migrated, redis_prefix):
    settings = make_settings(tmp_path, sqlite_migrated, session_store=REDIS_URL, session_key_prefix=redis_prefix,
                             rate_limit_per_s=0.5, rate_limit_burst=4)
    first, second = create_app(settings), create_app(settings)
    with TestClient(first) as a, TestClient(second) as b:
        key = new_key(first)
        assert statuses(a, key, 2) + statuses(b, key, 2) == [200] * 4
        refused = [a.get("/v1/optimizers", headers=bearer(key)), b.get("/v1/optimizers", headers=bearer(key))]
        assert [r.status_code for r in refused] == [429, 429]
        assert all(1 <= int(r.headers["Retry-After"]) <= 2 for r in refused)  # 0.5 tokens/s: under 2 s to go


def test_a_redis_outage_lets_requests_through():
    limiter = RedisRateLimiter.from_url("redis://127.0.0.1:1/0", "l2o-test:", rate=1.0, burst=1)
    try:
        assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    finally:
        limiter.close()
