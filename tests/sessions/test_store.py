"""One test suite for every SessionStore: the memory store and Redis behave the same."""

from __future__ import annotations

import secrets
import threading

import pytest
import torch

from service.errors import AtCapacity, ServiceUnavailable, TooManySessions
from service.sessions.memory_store import MemoryStore
from service.sessions.record import SessionInfo, SessionRecord, description_bytes
from service.sessions.redis_store import RedisStore
from tests.sessions.conftest import REDIS_URL

BIG = 1 << 40


def record(owner: str = "key-a", *, n: int = 5, version_id: str = "7", used: float = 1000.0,
           step: int = 0) -> SessionRecord:
    hc = torch.randn(n, 2, 2, 3)
    info = SessionInfo(
        id=secrets.token_urlsafe(16), owner=owner, optimizer="opt", version=1, version_id=version_id,
        digest="ab" * 32, shapes={"w": (n - 1,), "b": ()}, state_shape=tuple(hc.shape), step=step,
        created_at=used, last_used_at=used)
    return SessionRecord(info, hc)


def add(store, rec, *, per_owner: int = 100, total: int = BIG) -> SessionRecord:
    store.add(rec, max_per_owner=per_owner, max_total_bytes=total)
    return rec


def test_add_then_get_returns_the_same_record(store):
    rec = add(store, record())
    got = store.get(rec.id)
    assert got.info == rec.info
    assert got.hc.dtype == torch.float32 and torch.equal(got.hc, rec.hc)
    assert got.answer is None and got.answer_type is None
    assert store.info(rec.id) == rec.info
    assert rec.info.nbytes == rec.hc.numel() * 4
    assert store.total_bytes() == rec.info.held_bytes == rec.info.nbytes + description_bytes(rec.info.shapes)


def test_unknown_ids_are_absent(store):
    assert store.get("nope") is None and store.info("nope") is None
    assert store.delete("nope") is False
    assert store.commit_step("nope", expected_step=0, hc=torch.zeros(1), answer=b"x", answer_type="t",
                             used_at=1.0) is False


def test_list_owner_shows_only_that_owners_sessions_oldest_first(store):
    a2 = add(store, record("key-a", used=2000.0))
    a1 = add(store, record("key-a", used=1000.0))
    add(store, record("key-b"))
    assert [i.id for i in store.list_owner("key-a")] == [a1.id, a2.id]
    assert store.list_owner("key-c") == []


def test_commit_step_advances_only_from_the_expected_step(store):
    rec = add(store, record())
    new_hc = torch.randn(rec.hc.shape)
    assert store.commit_step(rec.id, expected_step=1, hc=new_hc, answer=b"A", answer_type="t/a", used_at=5e3) is False
    assert torch.equal(store.get(rec.id).hc, rec.hc) and store.get(rec.id).info.step == 0

    assert store.commit_step(rec.id, expected_step=0, hc=new_hc, answer=b"A\x00B", answer_type="t/a",
                             used_at=5e3) is True
    got = store.get(rec.id)
    assert got.info.step == 1 and got.info.last_used_at == 5e3
    assert torch.equal(got.hc, new_hc) and got.answer == b"A\x00B" and got.answer_type == "t/a"
    # The same step again (another process's duplicate) is refused and writes nothing.
    assert store.commit_step(rec.id, expected_step=0, hc=rec.hc, answer=b"Z", answer_type="t/z", used_at=6e3) is False
    assert store.get(rec.id).answer == b"A\x00B"


def test_concurrent_commits_of_one_step_let_exactly_one_win(store):
    rec = add(store, record())
    results = []

    def commit(i: int) -> None:
        results.append(store.commit_step(rec.id, expected_step=0, hc=torch.full(rec.hc.shape, float(i)),
                                         answer=str(i).encode(), answer_type="t", used_at=2e3))

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    got = store.get(rec.id)
    winner = int(got.answer)
    assert got.info.step == 1 and torch.equal(got.hc, torch.full(rec.hc.shape, float(winner)))


def test_the_per_owner_limit_refuses_and_writes_nothing(store):
    add(store, record("key-a"), per_owner=2)
    add(store, record("key-a"), per_owner=2)
    extra = record("key-a")
    with pytest.raises(TooManySessions, match="limit is 2"):
        add(store, extra, per_owner=2)
    assert store.get(extra.id) is None and len(store.list_owner("key-a")) == 2
    add(store, record("key-b"), per_owner=2)  # the limit is per key


def test_the_total_bytes_limit_refuses_and_writes_nothing(store):
    first = add(store, record(n=4))
    limit = first.info.held_bytes * 2
    add(store, record(n=4), total=limit)
    extra = record(n=1)
    with pytest.raises(AtCapacity, match=f"limit of {limit}"):
        add(store, extra, total=limit)
    assert store.get(extra.id) is None and store.total_bytes() == limit


def test_delete_frees_its_bytes_and_indexes(store):
    keep = add(store, record(version_id="7"))
    gone = add(store, record(version_id="7"))
    assert sorted(store.ids_using("7")) == sorted([keep.id, gone.id])
    assert store.delete(gone.id) is True
    assert store.get(gone.id) is None and store.delete(gone.id) is False
    assert store.ids_using("7") == [keep.id] and store.ids_using("8") == []
    assert store.total_bytes() == keep.info.held_bytes
    assert [i.id for i in store.list_owner("key-a")] == [keep.id]
    assert store.tombstone(gone.id, now=0.0) is None  # deleted is unknown, not expired


def test_expire_removes_only_idle_sessions_and_remembers_them(store):
    idle = add(store, record("key-a", used=100.0))
    busy = add(store, record("key-a", used=900.0))
    assert store.idle_ids(500.0) == [idle.id]
    assert store.expire(busy.id, idle_before=500.0, now=1000.0) is False
    assert store.expire(idle.id, idle_before=500.0, now=1000.0) is True
    assert store.get(idle.id) is None and store.get(busy.id) is not None
    assert store.tombstone(idle.id, now=1000.0) == "key-a"
    assert store.tombstone(busy.id, now=1000.0) is None
    assert store.total_bytes() == busy.info.held_bytes and store.ids_using("7") == [busy.id]
    store.drop_tombstone(idle.id)
    assert store.tombstone(idle.id, now=1000.0) is None


def test_memory_store_survives_a_graceful_restart(tmp_path):
    path = tmp_path / "data" / "sessions.safetensors"
    first = MemoryStore(snapshot=path)
    first.open()
    rec = add(first, record(used=10.0))
    other = add(first, record("key-b", n=3))
    first.commit_step(rec.id, expected_step=0, hc=torch.randn(rec.hc.shape), answer=b"\x00bytes", answer_type="t",
                      used_at=20.0)
    add(first, idle := record(used=1.0))
    first.expire(idle.id, idle_before=5.0, now=30.0)
    before = first.get(rec.id)
    first.close()
    assert path.stat().st_mode & 0o777 == 0o600

    second = MemoryStore(snapshot=path)
    second.open()
    got = second.get(rec.id)
    assert got.info == before.info and torch.equal(got.hc, before.hc)
    assert got.answer == b"\x00bytes" and got.answer_type == "t"
    assert torch.equal(second.get(other.id).hc, other.hc)
    assert second.tombstone(idle.id, now=31.0) == "key-a"
    assert second.total_bytes() == rec.info.held_bytes + other.info.held_bytes
    # Loaded once: a crash later must not resurrect these states.
    assert not path.exists()


def test_redis_store_is_shared_between_processes(redis_prefix):
    a = RedisStore.from_url(REDIS_URL, prefix=redis_prefix)
    b = RedisStore.from_url(REDIS_URL, prefix=redis_prefix)
    rec = add(a, record())
    assert b.commit_step(rec.id, expected_step=0, hc=torch.ones(rec.hc.shape), answer=b"x", answer_type="t",
                         used_at=1.0)
    assert a.get(rec.id).info.step == 1 and torch.equal(a.get(rec.id).hc, torch.ones(rec.hc.shape))
    a.close()
    b.close()


def test_a_redis_outage_is_a_503_not_an_internal_error():
    store = RedisStore.from_url("redis://127.0.0.1:1/0")
    for call in (store.open, lambda: store.get("s_x"), lambda: add(store, record())):
        with pytest.raises(ServiceUnavailable, match="session store \\(Redis\\) is unavailable") as exc:
            call()
        assert exc.value.status == 503
