"""Scale-out over HTTP: two `l2o serve` processes on one PostgreSQL and one Redis.

One client's requests alternate between the two, as behind a round-robin load balancer, and 5% of the step
answers are lost after the server applied the step (bench/load.py's DroppingTransport). The SDK retries
each with the same step number, so every retry lands on the process that did not apply it. Every step is
applied exactly once: each lost answer is answered again, byte for byte, by the other process, and the
updates and the final LSTM state are bit-identical to a sequential replay in this process.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from bench import load
from client import AsyncClient
from service.registry import keys, migrate
from service.registry.db import Database
from tests.conftest import PostgresDatabases, checkpoint_bytes
from tests.live_server import ServeProcess
from tests.record import record
from tests.sessions.conftest import REDIS_URL

pytestmark = pytest.mark.slow  # two real server processes and 200 steps over HTTP: ~30 s

STEPS = 200
DROP = 0.05
SEED = 7   # the drop pattern: 11 of this run's 211 answers


class RoundRobin(httpx.AsyncBaseTransport):
    """Sends each request to the next server in turn, and notes each step attempt: the server's port and
    the bytes it answered."""

    def __init__(self, ports: list[int]) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.ports = ports
        self.turn = 0
        self.steps: list[tuple[int, bytes]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        port = self.ports[self.turn % len(self.ports)]
        self.turn += 1
        request.url = request.url.copy_with(port=port)
        request.headers["Host"] = f"{request.url.host}:{port}"
        response = await self.inner.handle_async_request(request)
        if request.url.path.endswith("/step"):
            await response.aread()
            self.steps.append((port, response.content))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
def database(postgres_databases: PostgresDatabases) -> Iterator[str]:
    """A PostgreSQL database of this test's own, at the migration head (`l2o serve` refuses any other)."""
    url = postgres_databases.create()
    migrate.upgrade(url)
    yield url
    postgres_databases.drop(url)


@pytest.fixture
def servers(database, server_factory, redis_prefix, tmp_path) -> list[ServeProcess]:
    """Each with a data directory of its own: all they share is the database and Redis."""
    made = [server_factory(database_url=database, session_store=REDIS_URL, session_key_prefix=redis_prefix,
                           data_dir=str(tmp_path / f"data-{i}")) for i in range(2)]
    for server in made:   # one after the other: the first registers `opt`, the second finds it registered
        server.start(timeout=300)   # a first start may build the step operator (minutes on a loaded machine)
    return made


def optimize_key(database_url: str) -> str:
    db = Database(database_url)
    try:
        with db.session() as session:
            _, key = keys.create_key(session, "scale-out", ["optimize"])
            session.commit()
    finally:
        db.dispose()
    return key


async def train(servers: list[ServeProcess], key: str) -> dict:
    balancer = RoundRobin([s.port for s in servers])
    dropping = load.DroppingTransport(DROP, seed=SEED, inner=balancer)
    digest = hashlib.sha256()
    async with AsyncClient(servers[0].url, key, transport=dropping, max_retries=8) as l2o:
        session = await l2o.sessions.create("opt", load.SHAPES)
        answered = []
        for i in range(STEPS):
            result = await l2o.sessions.step(session.id, step=i, grads=load.grads(0, i))
            answered.append(result.step)
            for name in load.SHAPES:
                digest.update(np.ascontiguousarray(result.updates[name], dtype=np.float32).tobytes())
        final = await l2o.sessions.state(session.id)
        count = (await l2o.sessions.get(session.id)).step
    return {"attempts": balancer.steps, "lost": dropping.lost, "answered": answered, "digest": digest.hexdigest(),
            "hc": np.asarray(final.hc), "count": count}


def lost_attempts(attempts: list[tuple[int, bytes]], lost: list[bytes]) -> list[int]:
    """The attempts whose answers were thrown away, in order (each step's answer bytes are its own: they
    hold the step number)."""
    out, j = [], 0
    for k, (_, body) in enumerate(attempts):
        if j < len(lost) and body == lost[j]:
            out.append(k)
            j += 1
    assert j == len(lost), "a lost answer matches no attempt"
    return out


def test_two_servers_on_one_database_and_redis_apply_every_step_exactly_once(servers, database, fast_retries):
    run = asyncio.run(asyncio.wait_for(train(servers, optimize_key(database)), timeout=300))
    attempts, lost = run["attempts"], run["lost"]
    expected_digest, expected_hc = load.replay(checkpoint_bytes(seed=5), 0, STEPS)
    dropped = lost_attempts(attempts, lost)
    elsewhere = [k for k in dropped if k + 1 < len(attempts) and attempts[k + 1][0] != attempts[k][0]
                 and attempts[k + 1][1] == attempts[k][1]]
    per_server = [sum(1 for port, _ in attempts if port == s.port) for s in servers]
    identical = run["digest"] == expected_digest and np.array_equal(run["hc"], expected_hc)
    record("scale_out:servers", servers=len(servers), steps=STEPS, attempts=len(attempts), per_server=per_server,
           lost=len(lost), replayed_elsewhere=len(elsewhere), applied=run["count"], identical=identical)

    assert len(lost) >= 5, "too few answers were lost for the run to test anything"
    assert run["answered"] == list(range(1, STEPS + 1))
    assert len(attempts) == STEPS + len(lost)   # nothing retried but the lost answers
    assert min(per_server) >= STEPS // 2
    # Each lost answer was asked for again of the other process, which answered the very same bytes.
    assert elsewhere == dropped
    assert run["count"] == STEPS   # the session's own count: no step applied twice, none skipped
    assert run["digest"] == expected_digest, "the updates differ from a sequential replay"
    assert np.array_equal(run["hc"], expected_hc), "the final LSTM state differs from a sequential replay"
