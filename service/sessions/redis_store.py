"""The shared store: sessions in Redis, so any API process can serve any session and a restart loses nothing.

Keys, under a prefix (default `l2o:`) so several deployments can share one server:

    {p}s:{id}           hash: info (JSON), owner, version_id, step, last_used, hc, answer, answer_type
    {p}owner:{owner}    set of the owner's session ids (the per-key limit)
    {p}version:{vid}    set of the ids using an optimizer version (the registry's delete check)
    {p}used             sorted set id -> last used (expiry sweeps)
    {p}bytes            total bytes of state held (the server-wide limit)
    {p}tomb:{id}        the owner of an expired session, with a TTL

Every write that touches more than one key is a Lua script, so it is atomic. Scripts name the index
keys from the prefix, which is fine on a single Redis server or a replica set, not on Redis Cluster.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import redis
import torch

from service.errors import AtCapacity, ServiceUnavailable, TooManySessions
from service.sessions.record import SessionInfo, SessionRecord, state_from_bytes, state_to_bytes
from service.sessions.store import TOMBSTONE_TTL_S, SessionStore

ADD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {-1, 0} end
local owned = redis.call('SCARD', KEYS[2])
if owned >= tonumber(ARGV[2]) then return {1, owned} end
local held = tonumber(redis.call('GET', KEYS[5]) or '0')
if held + tonumber(ARGV[4]) > tonumber(ARGV[3]) then return {2, held} end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
redis.call('INCRBY', KEYS[5], ARGV[4])
return {0, 0}
"""

# Compare-and-set on the step count: a second API process that applied the same step first wins.
COMMIT = """
local current = redis.call('HGET', KEYS[1], 'step')
if (not current) or current ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'step', ARGV[2], 'hc', ARGV[3], 'answer', ARGV[4], 'answer_type', ARGV[5],
           'last_used', ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[7])
return 1
"""

# ARGV[3] empty: delete unconditionally; else expire only if still idle since before it, leaving a tombstone.
REMOVE = """
local f = redis.call('HMGET', KEYS[1], 'owner', 'version_id', 'nbytes', 'last_used')
if not f[1] then return 0 end
if ARGV[3] ~= '' and tonumber(f[4]) >= tonumber(ARGV[3]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', ARGV[2] .. 'owner:' .. f[1], ARGV[1])
redis.call('SREM', ARGV[2] .. 'version:' .. f[2], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DECRBY', KEYS[3], f[3])
if ARGV[3] ~= '' then redis.call('SET', KEYS[4], f[1], 'EX', ARGV[4]) end
return 1
"""

INFO_FIELDS = (b"info", b"step", b"last_used")


def _unavailable_on_redis_errors(cls: type) -> type:
    """A Redis outage reaches clients as 503 service_unavailable, not as an internal error."""
    for name in SessionStore.__abstractmethods__ | {"open"}:
        method = getattr(cls, name)

        @functools.wraps(method)
        def wrapper(*args: Any, _method: Any = method, **kwargs: Any) -> Any:
            try:
                return _method(*args, **kwargs)
            except redis.RedisError as exc:
                raise ServiceUnavailable(f"the session store (Redis) is unavailable: {exc}") from exc

        setattr(cls, name, wrapper)
    return cls


@_unavailable_on_redis_errors
class RedisStore(SessionStore):
    def __init__(self, client: redis.Redis, *, prefix: str = "l2o:", tombstone_ttl_s: float = TOMBSTONE_TTL_S) -> None:
        self.client = client
        self.prefix = prefix
        self.tombstone_ttl_s = tombstone_ttl_s
        self._add = client.register_script(ADD)
        self._commit = client.register_script(COMMIT)
        self._remove_script = client.register_script(REMOVE)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "l2o:") -> RedisStore:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30, health_check_interval=30)
        return cls(client, prefix=prefix)

    def open(self) -> None:
        self.client.ping()  # fail at start, not on the first step, when Redis is unreachable

    def close(self) -> None:
        self.client.close()

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"

    def add(self, record: SessionRecord, *, max_per_owner: int, max_total_bytes: int) -> None:
        info = record.info
        fields = {
            "info": json.dumps(info.to_json()), "owner": info.owner, "version_id": info.version_id,
            "nbytes": info.held_bytes, "step": info.step, "last_used": repr(info.last_used_at),
            "hc": state_to_bytes(record.hc),
            "answer": record.answer if record.answer is not None else b"",
            "answer_type": record.answer_type or "",
        }
        flat = [x for pair in fields.items() for x in pair]
        keys = [self._key("s", info.id), self._key("owner", info.owner), self._key("version", info.version_id),
                self.prefix + "used", self.prefix + "bytes"]
        code, value = self._add(keys=keys, args=[info.id, max_per_owner, max_total_bytes, info.held_bytes,
                                                 repr(info.last_used_at), *flat])
        if code == 1:
            raise TooManySessions(f"this key already holds {value} sessions, the limit is {max_per_owner}: "
                                  "delete one first", detail={"sessions": value, "limit": max_per_owner})
        if code == 2:
            raise AtCapacity(f"the server holds {value} bytes of session state; {info.held_bytes} more would pass "
                             f"its limit of {max_total_bytes}",
                             detail={"held": value, "requested": info.held_bytes, "limit": max_total_bytes})
        if code == -1:
            raise RuntimeError(f"session id collision: {info.id}")

    def get(self, session_id: str) -> SessionRecord | None:
        h = self.client.hgetall(self._key("s", session_id))
        if not h:
            return None
        info = _info(h[b"info"], h[b"step"], h[b"last_used"])
        answer_type = h[b"answer_type"].decode() or None
        return SessionRecord(info, state_from_bytes(h[b"hc"], info.state_shape, info.state_dtype),
                             h[b"answer"] if answer_type else None, answer_type)

    def step_buffer(self, record: SessionRecord) -> torch.Tensor:
        # `get` decodes a private copy of the state for each caller: the step may overwrite it in place.
        return record.hc

    def info(self, session_id: str) -> SessionInfo | None:
        raw, step, used = self.client.hmget(self._key("s", session_id), INFO_FIELDS)
        return _info(raw, step, used) if raw is not None else None

    def list_owner(self, owner: str) -> list[SessionInfo]:
        ids = sorted(m.decode() for m in self.client.smembers(self._key("owner", owner)))
        pipe = self.client.pipeline(transaction=False)
        for i in ids:
            pipe.hmget(self._key("s", i), INFO_FIELDS)
        infos = [_info(*row) for row in pipe.execute() if row[0] is not None]
        return sorted(infos, key=lambda i: (i.created_at, i.id))

    def commit_step(self, session_id: str, *, expected_step: int, hc: torch.Tensor, answer: bytes | bytearray,
                    answer_type: str, used_at: float) -> bool:
        done = self._commit(keys=[self._key("s", session_id), self.prefix + "used"],
                            args=[str(expected_step), str(expected_step + 1), state_to_bytes(hc), bytes(answer),
                                  answer_type, repr(used_at), session_id])
        return done == 1

    def delete(self, session_id: str) -> bool:
        return self._remove(session_id, "") == 1

    def expire(self, session_id: str, *, idle_before: float, now: float) -> bool:
        return self._remove(session_id, repr(idle_before)) == 1

    def _remove(self, session_id: str, idle_before: str) -> int:
        keys = [self._key("s", session_id), self.prefix + "used", self.prefix + "bytes", self._key("tomb", session_id)]
        return self._remove_script(keys=keys, args=[session_id, self.prefix, idle_before,
                                                    max(1, int(self.tombstone_ttl_s))])

    def tombstone(self, session_id: str, *, now: float) -> str | None:
        owner = self.client.get(self._key("tomb", session_id))
        return owner.decode() if owner is not None else None

    def drop_tombstone(self, session_id: str) -> None:
        self.client.delete(self._key("tomb", session_id))

    def idle_ids(self, idle_before: float) -> list[str]:
        return [m.decode() for m in self.client.zrangebyscore(self.prefix + "used", "-inf", f"({idle_before!r}")]

    def ids_using(self, version_id: str) -> list[str]:
        return sorted(m.decode() for m in self.client.smembers(self._key("version", str(version_id))))

    def total_bytes(self) -> int:
        return int(self.client.get(self.prefix + "bytes") or 0)


def _info(raw: bytes, step: bytes, last_used: bytes) -> SessionInfo:
    doc = json.loads(raw)
    doc["step"] = int(step)
    doc["last_used_at"] = float(last_used)
    return SessionInfo.from_json(doc)
