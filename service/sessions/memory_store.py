"""The embedded store: sessions in this process's memory, kept across a graceful restart by a snapshot file."""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import replace
from pathlib import Path

import torch

from service.errors import AtCapacity, TooManySessions
from service.sessions.record import SessionInfo, SessionRecord
from service.sessions.store import TOMBSTONE_TTL_S, SessionStore
from service.sessions.wire import read_safetensors, write_safetensors

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = "l2o-sessions/1"
SNAPSHOT_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "U8": torch.uint8}


class MemoryStore(SessionStore):
    keeps_tensors = True

    def __init__(self, snapshot: Path | None = None, *, tombstone_ttl_s: float = TOMBSTONE_TTL_S) -> None:
        self.snapshot = snapshot
        self.tombstone_ttl_s = tombstone_ttl_s
        self._lock = threading.Lock()
        self._records: dict[str, SessionRecord] = {}
        # Per session, the state tensor of the step before the current one: the next step writes into
        # it (double buffering), so a step never allocates, and the current state stays intact until
        # its successor is committed. Resident memory is twice the state bytes the limits count.
        self._spares: dict[str, torch.Tensor] = {}
        self._tombstones: dict[str, tuple[str, float]] = {}  # id -> (owner, forget after)
        self._bytes = 0

    # --- lifecycle: a graceful shutdown writes every session to the data dir, the next start reads them ---

    def open(self) -> None:
        if self.snapshot is None or not self.snapshot.exists():
            return
        records, tombstones = read_snapshot(self.snapshot.read_bytes())
        with self._lock:
            for record in records:
                self._records[record.id] = record
                self._bytes += record.info.held_bytes
            self._tombstones.update(tombstones)
        # Loaded once: a later crash must not bring back these (by then stale) states.
        self.snapshot.unlink()
        log.info("loaded %d sessions from %s", len(records), self.snapshot)

    def close(self) -> None:
        if self.snapshot is None:
            return
        with self._lock:
            records = list(self._records.values())
            tombstones = dict(self._tombstones)
        if not records and not tombstones:
            return
        self.snapshot.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.snapshot.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(write_snapshot(records, tombstones))
        os.replace(tmp, self.snapshot)
        log.info("saved %d sessions to %s", len(records), self.snapshot)

    # --- the store ---

    def add(self, record: SessionRecord, *, max_per_owner: int, max_total_bytes: int) -> None:
        info = record.info
        with self._lock:
            owned = sum(1 for r in self._records.values() if r.info.owner == info.owner)
            if owned >= max_per_owner:
                raise TooManySessions(f"this key already holds {owned} sessions, the limit is {max_per_owner}: "
                                      "delete one first", detail={"sessions": owned, "limit": max_per_owner})
            if self._bytes + info.held_bytes > max_total_bytes:
                raise AtCapacity(f"the server holds {self._bytes} bytes of session state; {info.held_bytes} more "
                                 f"would pass its limit of {max_total_bytes}",
                                 detail={"held": self._bytes, "requested": info.held_bytes, "limit": max_total_bytes})
            if info.id in self._records:
                raise RuntimeError(f"session id collision: {info.id}")
            self._records[info.id] = record
            self._bytes += info.held_bytes

    def get(self, session_id: str) -> SessionRecord | None:
        with self._lock:
            return self._records.get(session_id)

    def info(self, session_id: str) -> SessionInfo | None:
        record = self.get(session_id)
        return record.info if record is not None else None

    def list_owner(self, owner: str) -> list[SessionInfo]:
        with self._lock:
            infos = [r.info for r in self._records.values() if r.info.owner == owner]
        return sorted(infos, key=lambda i: (i.created_at, i.id))

    def commit_step(self, session_id: str, *, expected_step: int, hc: torch.Tensor, answer: bytes | bytearray,
                    answer_type: str, used_at: float) -> bool:
        with self._lock:
            record = self._records.get(session_id)
            if record is None or record.info.step != expected_step:
                return False
            info = replace(record.info, step=expected_step + 1, last_used_at=used_at)
            self._records[session_id] = SessionRecord(info, hc, answer, answer_type)
            if record.hc is not hc:
                self._spares[session_id] = record.hc
            return True

    def step_buffer(self, record: SessionRecord) -> torch.Tensor:
        with self._lock:
            spare = self._spares.pop(record.id, None)
        hc = record.hc
        if spare is None or spare.shape != hc.shape or spare.dtype != hc.dtype or spare.device != hc.device:
            return torch.empty_like(hc)
        return spare

    def delete(self, session_id: str) -> bool:
        with self._lock:
            return self._remove(session_id) is not None

    def expire(self, session_id: str, *, idle_before: float, now: float) -> bool:
        with self._lock:
            record = self._records.get(session_id)
            if record is None or record.info.last_used_at >= idle_before:
                return False
            self._remove(session_id)
            self._tombstones[session_id] = (record.info.owner, now + self.tombstone_ttl_s)
            self._tombstones = {k: v for k, v in self._tombstones.items() if v[1] > now}
            return True

    def tombstone(self, session_id: str, *, now: float) -> str | None:
        with self._lock:
            entry = self._tombstones.get(session_id)
        return entry[0] if entry is not None and entry[1] > now else None

    def drop_tombstone(self, session_id: str) -> None:
        with self._lock:
            self._tombstones.pop(session_id, None)

    def idle_ids(self, idle_before: float) -> list[str]:
        with self._lock:
            return [i for i, r in self._records.items() if r.info.last_used_at < idle_before]

    def ids_using(self, version_id: str) -> list[str]:
        with self._lock:
            return [i for i, r in self._records.items() if r.info.version_id == str(version_id)]

    def total_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def _remove(self, session_id: str) -> SessionRecord | None:
        record = self._records.pop(session_id, None)
        self._spares.pop(session_id, None)
        if record is not None:
            self._bytes -= record.info.held_bytes
        return record


def write_snapshot(records: list[SessionRecord], tombstones: dict[str, tuple[str, float]]) -> bytes:
    tensors: dict[str, torch.Tensor] = {}
    sessions = []
    for r in records:
        tensors[f"hc/{r.id}"] = r.hc
        if r.answer is not None:
            tensors[f"answer/{r.id}"] = torch.frombuffer(bytearray(r.answer), dtype=torch.uint8)
        sessions.append({"info": r.info.to_json(), "answer_type": r.answer_type})
    meta = {"format": SNAPSHOT_FORMAT, "sessions": json.dumps(sessions),
            "tombstones": json.dumps({k: list(v) for k, v in tombstones.items()})}
    return write_safetensors(tensors, meta)


def read_snapshot(data: bytes) -> tuple[list[SessionRecord], dict[str, tuple[str, float]]]:
    meta, tensors = read_safetensors(bytearray(data), max_header=len(data), dtypes=SNAPSHOT_DTYPES)
    if meta.get("format") != SNAPSHOT_FORMAT:
        raise ValueError(f"not a session snapshot (format {meta.get('format')!r}, expected {SNAPSHOT_FORMAT})")
    records = []
    for doc in json.loads(meta["sessions"]):
        info = SessionInfo.from_json(doc["info"])
        answer = tensors.get(f"answer/{info.id}")
        records.append(SessionRecord(
            info, tensors[f"hc/{info.id}"].clone(),
            answer.numpy().tobytes() if answer is not None else None, doc["answer_type"]))
    tombstones = {k: (v[0], float(v[1])) for k, v in json.loads(meta["tombstones"]).items()}
    return records, tombstones
