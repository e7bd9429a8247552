"""The database goes away under a running `l2o serve` (PostgreSQL behind a TCP proxy the test cuts; the
shared server itself is never stopped): steps on live sessions go on, registry calls answer 503 with
Retry-After, and everything recovers by itself once the database is back."""

from __future__ import annotations

import time

import httpx
import pytest
import torch
from sqlalchemy import make_url

from service.registry import keys, migrate
from service.registry.db import Database
from service.sessions import wire
from service.sessions.wire import StepMessage, WireFormat
from tests.conftest import POSTGRES_URL
from tests.faults.conftest import SHAPES, expected_updates, grads
from tests.faults.proxy import TcpProxy
from tests.record import record

pytestmark = pytest.mark.slow  # a real server process: a few seconds

ST = {"Content-Type": wire.SAFETENSORS_TYPE}


def step(http: httpx.Client, sid: str, n: int) -> torch.Tensor:
    body = wire.encode(StepMessage(n, grads(n)), WireFormat.SAFETENSORS, field="grads")
    response = http.post(f"/v1/sessions/{sid}/step", content=body, headers=ST)
    assert response.status_code == 200, (n, response.text)
    answer = wire.decode(response.content, WireFormat.SAFETENSORS, field="updates")
    assert answer.step == n + 1
    return torch.cat([answer.tensors[name].reshape(-1) for name in SHAPES])


def refused_as_unavailable(response: httpx.Response) -> bool:
    return (response.status_code == 503 and response.json()["error"]["code"] == "database_not_ready"
            and response.headers.get("retry-after") == "1")


def test_steps_go_on_while_the_database_is_away_and_the_registry_recovers(postgres_databases, server_factory):
    direct = postgres_databases.create()
    migrate.upgrade(direct)
    target = make_url(POSTGRES_URL)
    proxy = TcpProxy((target.host or "127.0.0.1", target.port or 5432))
    proxied = make_url(direct).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    db = Database(direct)
    with db.session() as s:
        _, key = keys.create_key(s, "trainer", ["optimize", "train", "admin"])
        s.commit()
    db.dispose()
    server = server_factory(database_url=proxied).start()
    expected = expected_updates(12)
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            sid = http.post("/v1/sessions", json={"optimizer": "opt", "shapes": SHAPES}).json()["id"]
            got = [step(http, sid, n) for n in range(4)]

            proxy.cut()
            got += [step(http, sid, n) for n in range(4, 8)]  # the key was checked before: it still works
            outage = {
                "list": http.get("/v1/optimizers"),
                "version": http.get("/v1/optimizers/opt/versions/1"),
                "new session": http.post("/v1/sessions", json={"optimizer": "opt", "shapes": SHAPES}),
                "jobs": http.get("/v1/jobs"),
                "unknown key": http.get("/v1/sessions", headers={"Authorization": "Bearer l2o_never_seen"}),
            }
            for what, response in outage.items():
                assert refused_as_unavailable(response), (what, response.status_code, response.text)
            assert http.get("/readyz").status_code == 503 and http.get("/healthz").status_code == 200
            assert server.proc.poll() is None

            proxy.restore()
            restored = time.monotonic()
            deadline = time.monotonic() + 20
            while (r := http.get("/v1/optimizers")).status_code != 200:  # nobody restarts anything
                assert time.monotonic() < deadline, f"the registry did not recover: {r.status_code} {r.text}"
                time.sleep(0.1)
            recovered_s = time.monotonic() - restored
            assert [o["name"] for o in r.json()] == ["opt"]
            assert http.post("/v1/sessions", json={"optimizer": "opt", "shapes": SHAPES}).status_code == 201
            assert http.get("/readyz").status_code == 200
            got += [step(http, sid, n) for n in range(8, 12)]
        # Every step of the run, before, during and after the outage, is exactly what lopt computes.
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
        record("database_outage", steps_during=4, refused_503=len(outage), recovered_s=round(recovered_s, 2),
               steps_total=len(got))
    finally:
        server.kill()
        proxy.close()
        postgres_databases.drop(direct)


def test_the_outage_grace_covers_only_keys_checked_recently():
    from service.api.key_cache import KeyCache
    from service.registry.models import KeyGrant
    from tests.sessions.fakes import FakeClock

    clock = FakeClock(0.0)
    cache = KeyCache(grace_s=300, clock=clock)
    row = KeyGrant(id=7, name="k", prefix="l2o_abcdefgh", key_hash="h" * 64, scopes=("optimize",))
    assert cache.recall(row.key_hash) is None  # never checked: no grace
    cache.remember(row)
    clock.advance(299)
    recalled = cache.recall(row.key_hash)
    assert (recalled.id, recalled.scopes) == (7, ("optimize",))
    clock.advance(2)
    assert cache.recall(row.key_hash) is None  # checked too long ago
    off = KeyCache(grace_s=0)
    off.remember(row)
    assert off.recall(row.key_hash) is None
