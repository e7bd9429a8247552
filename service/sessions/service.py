"""The step service: sessions that pin an optimizer version and hold its LSTM state between HTTP calls.

    step:  api/sessions.py -> SessionService.step -> _step: checks -> lopt.step (the LSTM: lopt/kernel.py,
           into the session's spare buffer) -> store.commit_step

A step request carries the number of steps the session has applied so far, which makes it safe to retry:

    request step == count       apply: state advanced, count + 1, the answer stored with the state
    request step == count - 1   a retry whose answer was lost: the stored answer again, byte for byte
    anything else               409 step_conflict, naming the step expected

Steps on one session run one at a time, in arrival order (turns.py: a lock per session); steps on
different sessions run concurrently. Store calls and torch work run on worker threads, except small
steps on the memory store (bodies up to INLINE_BYTES), which run on the event loop: there a thread round
trip costs more than the step. Every check runs before anything is written, so a refused request leaves
the session as it was. (Batching concurrent sessions into one kernel call measured 0.93-1.57x over
several runs of bench/step.py, not a steady gain, so each step is its own call.)
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import torch

from service import lopt
from service.errors import (
    AtCapacity,
    InvalidGradients,
    L2OError,
    MalformedBody,
    SessionExpired,
    SessionNotFound,
    SessionTooLarge,
    StateMismatch,
    StepConflict,
    TooManySessions,
    ValidationError,
)
from service.lopt import Checkpoint, CheckpointError, LSTMState, OptimizerConfig
from service.lopt.tensors import all_finite
from service.registry.names import MAX_VERSION
from service.sessions import wire
from service.sessions.record import STATE_DTYPES, SessionInfo, SessionRecord, description_bytes
from service.sessions.store import SessionStore
from service.sessions.turns import SessionTurns
from service.sessions.versions import VersionRef, VersionSource
from service.sessions.wire import StepMessage, WireFormat

log = logging.getLogger(__name__)

STATE_FORMAT = "l2o-session-state/1"
STATE_TYPE = wire.SAFETENSORS_TYPE
MAX_NAME_CHARS = 512
MAX_VERSION_DIGITS = len(str(MAX_VERSION))
INLINE_BYTES = 128 * 1024   # a step body up to this (about 32,000 float32 gradients) runs on the event loop


@dataclass(frozen=True)
class SessionLimits:
    idle_timeout_s: float = 3600.0
    max_coords: int = 1_000_000            # per session; 320 bytes of state each with the default LSTM
    max_sessions_per_key: int = 16
    max_state_bytes: int = 2 * 1024**3     # all sessions together: state and description (SessionInfo.held_bytes)
    max_parameters: int = 10_000           # per session
    max_name_bytes: int = 1024**2          # per session, all parameter names together (UTF-8)
    max_shape_entries: int = 65_536        # per session, the dimensions of every shape together
    max_bytes_per_key: int = 1024**3       # all of one key's sessions together (held_bytes)

    @classmethod
    def from_settings(cls, settings: Any) -> SessionLimits:
        return cls(idle_timeout_s=settings.session_idle_timeout_s, max_coords=settings.session_max_coords,
                   max_sessions_per_key=settings.session_max_per_key, max_state_bytes=settings.session_max_state_bytes,
                   max_parameters=settings.session_max_parameters, max_name_bytes=settings.session_max_name_bytes,
                   max_shape_entries=settings.session_max_shape_entries,
                   max_bytes_per_key=settings.session_max_bytes_per_key)


@dataclass(frozen=True)
class Answer:
    body: bytes | bytearray
    content_type: str


class SessionService:
    def __init__(self, store: SessionStore, versions: VersionSource, limits: SessionLimits = SessionLimits(), *,
                 clock: Callable[[], float] = time.time, device: torch.device | str = "cpu",
                 kernel: str = "auto") -> None:
        self.store = store
        # Where the LSTM runs, and where states live when the store keeps tensors (the memory store): then
        # a GPU step moves only gradients in and updates out. A store of bytes (Redis) holds them on the host.
        self.device = torch.device(device)
        self.state_device = self.device if store.keeps_tensors else torch.device("cpu")
        self.versions = versions
        self.limits = limits
        self.clock = clock
        self._weights: dict[str, tuple[OptimizerConfig, dict[str, torch.Tensor]]] = {}  # by digest
        self._weights_lock = threading.Lock()
        self.kernel = kernel   # lopt.kernel.KERNELS: "auto", "native" or "torch" (L2O_KERNEL)
        self._turns = SessionTurns()   # one step at a time per session, in arrival order
        # Small steps on a memory store run on the event loop: handing them to a worker thread and back
        # costs more than the work. A Redis store's calls wait on the network, so its steps always go
        # to a worker thread.
        self.inline_bytes = INLINE_BYTES if store.keeps_tensors and self.device.type == "cpu" else 0

    # --- sessions ------------------------------------------------------------------------------------------

    async def create(self, owner: str, reference: str | None, shapes: Mapping[str, Sequence[int]] | None,
                     resume_state: bytes | bytearray | None = None, state_dtype: str | None = None) -> SessionInfo:
        """A new session on the version `reference` resolves to, for parameters of these shapes, its LSTM
        state kept in `state_dtype` (float32 by default; bfloat16 or float16 halve the bytes held).

        With `resume_state` (bytes from export_state) the session continues that state and step count;
        `reference`, `shapes` and `state_dtype` then default to the state's own and, when given, must
        agree with it.
        """
        return await anyio.to_thread.run_sync(self._create, str(owner), reference, shapes, resume_state,
                                              state_dtype)

    async def get(self, owner: str, session_id: str) -> SessionInfo:
        return await anyio.to_thread.run_sync(self._live_info, str(owner), session_id)

    async def list(self, owner: str, *, limit: int | None = None, after: tuple[float, str] | None = None
                   ) -> list[SessionInfo]:
        """The owner's live sessions, oldest first: at most `limit`, those after the (created_at, id) `after`."""
        return await anyio.to_thread.run_sync(self._list, str(owner), limit, after)

    async def delete(self, owner: str, session_id: str) -> None:
        async with self._turns.of(session_id):
            await anyio.to_thread.run_sync(self._delete, str(owner), session_id)

    async def export_state(self, owner: str, session_id: str) -> bytes:
        """The session's LSTM state and step count as safetensors, with the version and digest in metadata."""
        async with self._turns.of(session_id):
            return await anyio.to_thread.run_sync(self._export, str(owner), session_id)

    async def step(self, owner: str, session_id: str, body: bytes | bytearray, fmt: WireFormat) -> Answer:
        # The lock is taken before anything is awaited, so steps queue in the order they arrived.
        async with self._turns.of(session_id):
            if len(body) <= self.inline_bytes:
                return self._step(str(owner), session_id, body, fmt)
            return await anyio.to_thread.run_sync(self._step, str(owner), session_id, body, fmt)

    async def step_body_limit(self, owner: str, session_id: str, fmt: WireFormat) -> int:
        """The most bytes a step body for this session can hold in `fmt`: found (404, 410 as a step would
        be) before the body is read, so a body no step of this session could send is refused unread."""
        if self.store.keeps_tensors:   # a dict lookup: cheaper than the thread hop
            info = self._live_info(str(owner), session_id)
        else:
            info = await anyio.to_thread.run_sync(self._live_info, str(owner), session_id)
        return wire.max_body_bytes(info.shapes, fmt)

    def is_version_in_use(self, version_id: int | str) -> bool:
        """The registry's delete check: does a live (not idle-expired) session use this version?"""
        now = self.clock()
        live = False
        for session_id in self.store.ids_using(str(version_id)):
            info = self.store.info(session_id)
            if info is not None and not self._expire_if_idle(info, now):
                live = True
        return live

    def purge_idle(self) -> int:
        """Expire every idle session (leaving tombstones); the sweeper calls this periodically."""
        now = self.clock()
        cutoff = now - self.limits.idle_timeout_s
        return sum(self.store.expire(i, idle_before=cutoff, now=now) for i in self.store.idle_ids(cutoff))

    async def run_sweeper(self, interval_s: float | None = None) -> None:
        interval = interval_s or max(1.0, min(60.0, self.limits.idle_timeout_s / 4))
        while True:
            await anyio.sleep(interval)
            try:
                await anyio.to_thread.run_sync(self.purge_idle)
            except Exception:  # a store outage must not end the sweeps for the life of the process
                log.exception("expiring idle sessions failed; will retry in %.0f s", interval)

    # --- the work, on worker threads --------------------------------------------------------------------------

    def _create(self, owner: str, reference: str | None, shapes: Mapping[str, Sequence[int]] | None,
                resume_state: bytes | bytearray | None, state_dtype: str | None = None) -> SessionInfo:
        if state_dtype is not None and state_dtype not in STATE_DTYPES:
            raise ValidationError(f"state_dtype must be one of {', '.join(STATE_DTYPES)}, got {state_dtype!r}")
        given = check_shapes(shapes, self.limits) if shapes is not None else None
        state = read_state(resume_state, self.limits) if resume_state is not None else None
        if state is None and (reference is None or given is None):
            raise ValidationError("a new session needs an optimizer reference and the shapes of the parameters")
        if state is not None:
            reference = reference or f"{state.optimizer}:{state.version}"
        shapes_ = state.shapes if state is not None else given
        n_coords = sum(math.prod(s) for s in shapes_.values())
        if n_coords > self.limits.max_coords:
            raise SessionTooLarge(f"the parameters hold {n_coords} coordinates, over this server's limit of "
                                  f"{self.limits.max_coords} per session (L2O_SESSION_MAX_COORDS)",
                                  detail={"n_coords": n_coords, "limit": self.limits.max_coords})
        version = self.versions.resolve(reference)
        config, _ = self._load_weights(version.id, version.digest)
        # Priced before it is paid for: the state's bytes follow from the version's config (whatever its
        # architecture), and every limit is checked before anything is allocated.
        dtype = state.hc.dtype if state is not None else STATE_DTYPES[state_dtype or "float32"]
        self.purge_idle()  # sessions past their idle time must not count against the limits
        self._check_room(owner, n_coords * config.state_floats_per_coord * dtype.itemsize + description_bytes(shapes_))
        if state is None:
            step, hc = 0, lopt.init(config, n_coords, dtype=STATE_DTYPES[state_dtype or "float32"],
                                    device=self.state_device).hc
        else:
            check_resume(state, version, reference, config, given, state_dtype)
            step, hc = state.step, state.hc.to(self.state_device, copy=True)
        now = self.clock()
        info = SessionInfo(
            id="s_" + secrets.token_urlsafe(24), owner=owner, optimizer=version.name, version=version.version,
            version_id=version.id, digest=version.digest, shapes=shapes_, state_shape=tuple(hc.shape), step=step,
            created_at=now, last_used_at=now, state_dtype=dtype_name(hc.dtype))
        self.store.add(SessionRecord(info, hc), max_per_owner=self.limits.max_sessions_per_key,
                       max_total_bytes=self.limits.max_state_bytes)
        return info

    def _check_room(self, owner: str, held_bytes: int) -> None:
        """Refuse a session of `held_bytes` that the key's quota or the server's room cannot take. (The
        store checks the count and the total again, atomically, when it adds the session.)"""
        owned = self.store.list_owner(owner)
        if len(owned) >= self.limits.max_sessions_per_key:
            raise TooManySessions(f"this key already holds {len(owned)} sessions, the limit is "
                                  f"{self.limits.max_sessions_per_key} (L2O_SESSION_MAX_PER_KEY): delete one first",
                                  detail={"sessions": len(owned), "limit": self.limits.max_sessions_per_key})
        key_bytes = sum(i.held_bytes for i in owned)
        if key_bytes + held_bytes > self.limits.max_bytes_per_key:
            raise TooManySessions(f"this key's sessions hold {key_bytes} bytes; {held_bytes} more would pass its quota "
                                  f"of {self.limits.max_bytes_per_key} (L2O_SESSION_MAX_BYTES_PER_KEY): delete one "
                                  "first", detail={"held": key_bytes, "requested": held_bytes,
                                                   "limit": self.limits.max_bytes_per_key})
        total = self.store.total_bytes()
        if total + held_bytes > self.limits.max_state_bytes:
            raise AtCapacity(f"the server holds {total} bytes of sessions; {held_bytes} more would pass its limit of "
                             f"{self.limits.max_state_bytes} (L2O_SESSION_MAX_STATE_BYTES)",
                             detail={"held": total, "requested": held_bytes, "limit": self.limits.max_state_bytes})

    def _list(self, owner: str, limit: int | None = None, after: tuple[float, str] | None = None
              ) -> list[SessionInfo]:
        now = self.clock()
        infos = [i for i in self.store.list_owner(owner)
                 if (after is None or (i.created_at, i.id) > after) and not self._expire_if_idle(i, now)]
        return infos if limit is None else infos[:limit]

    def _delete(self, owner: str, session_id: str) -> None:
        info = self.store.info(session_id)
        if info is None and self.store.tombstone(session_id, now=self.clock()) == owner:
            self.store.drop_tombstone(session_id)  # deleting an expired session: it is gone, as asked
            return
        if info is None or info.owner != owner:
            raise not_found(session_id)
        self.store.delete(session_id)

    def _export(self, owner: str, session_id: str) -> bytes:
        record = self._live_record(owner, session_id)
        info = record.info
        meta = {"format": STATE_FORMAT, "step": str(info.step), "optimizer": info.optimizer,
                "version": str(info.version), "digest": info.digest, "session": info.id,
                "shapes": json.dumps([[n, list(s)] for n, s in info.shapes.items()])}
        return wire.write_safetensors({"hc": record.hc}, meta)

    def _step(self, owner: str, session_id: str, body: bytes | bytearray, fmt: WireFormat) -> Answer:
        """Every check first, then the LSTM, then one commit: the answer, or an L2OError with nothing written."""
        message = wire.decode(body, fmt)
        now = self.clock()
        record = self._live_record(owner, session_id, now)
        count = record.info.step
        if message.step not in (count, count - 1):
            raise step_conflict(message.step, count)
        flat = flatten_grads(record.info.shapes, message)
        if not all_finite(flat):
            raise non_finite(record.info.shapes, flat)
        if message.step == count - 1:
            return self._replay(record, fmt)
        config, weights = self._load_weights(record.info.version_id, record.info.digest)
        # The new state goes into a buffer the store keeps for this session: the old state stays
        # intact until the commit, and no step pays for fresh memory. Where the state is not on the step
        # device (a Redis store, or a snapshot loaded onto the CPU) it is copied there, and back, or kept
        # there from now on when the store keeps tensors.
        buffer = self.store.step_buffer(record)
        on_host = self.device.type == "cpu"
        state = record.hc if on_host else record.hc.to(self.device, non_blocking=True)
        out = buffer if buffer.device == self.device else torch.empty_like(state)
        # A binary answer is allocated now, and a CPU step writes its updates straight into it.
        answer = wire.SafetensorsAnswer(record.info.shapes, count + 1) if fmt is WireFormat.SAFETENSORS else None
        if answer is not None and on_host:
            updates = answer.values
        else:
            updates = torch.empty(flat.shape[0], dtype=torch.float32, device=self.device)
        grads = flat if on_host else flat.to(self.device, non_blocking=True)
        with torch.no_grad():
            lopt.step(config, weights, grads, LSTMState(state), out_state=out, out_updates=updates, kernel=self.kernel)
        keep = out if self.store.keeps_tensors else buffer
        if keep is not out:
            keep.copy_(out)
        if answer is not None:
            if updates is not answer.values:
                answer.values.copy_(updates)
            body_out: bytes | bytearray = answer.body
        else:
            body_out = wire.encode(StepMessage(count + 1, split_updates(record.info.shapes, updates.cpu())), fmt)
        if self.store.commit_step(record.id, expected_step=count, hc=keep, answer=body_out,
                                  answer_type=fmt.content_type, used_at=now):
            return Answer(body_out, fmt.content_type)
        # Another API process applied this step first: answer as if this request had come after it.
        current = self._live_record(owner, record.id, now)
        if current.info.step == count + 1:
            return self._replay(current, fmt)
        raise step_conflict(count, current.info.step)

    def _replay(self, record: SessionRecord, fmt: WireFormat) -> Answer:
        count = record.info.step
        if record.answer is None or record.answer_type is None:
            raise StepConflict(
                f"step {count - 1} was applied before this session was resumed, so its answer is not held: "
                f"send step {count}", detail={"expected": count, "got": count - 1})
        if record.answer_type == fmt.content_type:
            return Answer(record.answer, record.answer_type)
        # The retry switched formats: the same updates, in the session's parameter order, encoded as this
        # request asks; encoding is deterministic, so these are the bytes the step would have answered.
        stored = wire.decode(record.answer, wire.format_of(record.answer_type), field="updates")
        message = StepMessage(stored.step, {name: stored.tensors[name] for name in record.info.shapes})
        return Answer(wire.encode(message, fmt), fmt.content_type)

    # --- lookups -----------------------------------------------------------------------------------------

    def _live_info(self, owner: str, session_id: str, now: float | None = None) -> SessionInfo:
        now = self.clock() if now is None else now
        info = self.store.info(session_id)
        self._check_live(owner, session_id, info, now)
        return info

    def _live_record(self, owner: str, session_id: str, now: float | None = None) -> SessionRecord:
        now = self.clock() if now is None else now
        record = self.store.get(session_id)
        self._check_live(owner, session_id, record.info if record is not None else None, now)
        return record

    def _check_live(self, owner: str, session_id: str, info: SessionInfo | None, now: float) -> None:
        # Another key's session, live or expired, is answered exactly like one that never existed.
        if info is None:
            if self.store.tombstone(session_id, now=now) == owner:
                raise self._expired(session_id)
            raise not_found(session_id)
        if info.owner != owner:
            raise not_found(session_id)
        if self._expire_if_idle(info, now):
            raise self._expired(session_id)

    def _expire_if_idle(self, info: SessionInfo, now: float) -> bool:
        cutoff = now - self.limits.idle_timeout_s
        if info.last_used_at >= cutoff:
            return False
        self.store.expire(info.id, idle_before=cutoff, now=now)
        return True

    def _expired(self, session_id: str) -> SessionExpired:
        return SessionExpired(
            f"session {session_id} expired after {self.limits.idle_timeout_s:g} s without a step: create a new "
            "session, or resume one from a state exported with GET /v1/sessions/{id}/state",
            detail={"session": session_id, "idle_timeout_s": self.limits.idle_timeout_s})

    def _load_weights(self, version_id: str, digest: str) -> tuple[OptimizerConfig, dict[str, torch.Tensor]]:
        """Each version's weights, read from the registry once and kept: versions are immutable.

        Keyed by digest, not id: a database may hand a deleted version's id to a new one.
        """
        with self._weights_lock:
            cached = self._weights.get(digest)
            if cached is not None:
                return cached
            data = self.versions.checkpoint(version_id)
            if data is None:
                raise L2OError(f"optimizer version {version_id} used by a session no longer exists in the registry")
            try:
                checkpoint = Checkpoint.from_bytes(data, expected_sha256=digest)
            except CheckpointError as exc:
                raise L2OError(f"the registry's checkpoint for version {version_id} does not load: {exc}") from exc
            weights = {k: v.to(torch.float32).contiguous().to(self.device) for k, v in checkpoint.weights.items()}
            self._weights[digest] = (checkpoint.config, weights)
            return self._weights[digest]


# --- checks and conversions shared by create and step ----------------------------------------------------

def not_found(session_id: str) -> SessionNotFound:
    return SessionNotFound(f"no session {session_id!r}", detail={"session": session_id})


def step_conflict(got: int, count: int) -> StepConflict:
    return StepConflict(
        f"step {got} does not follow: the session has applied {count} steps, so the server expects step {count}"
        + (f" (or step {count - 1} again, to replay its answer)" if count > 0 else ""),
        detail={"expected": count, "got": got})


def check_shapes(shapes: Mapping[str, Sequence[int]],
                 limits: SessionLimits = SessionLimits()) -> dict[str, tuple[int, ...]]:
    if not isinstance(shapes, Mapping) or not shapes:
        raise ValidationError("shapes must name at least one parameter: {\"fc1.weight\": [20, 64], ...}")
    if len(shapes) > limits.max_parameters:
        raise SessionTooLarge(f"{len(shapes)} parameters, over this server's limit of {limits.max_parameters} per "
                              "session (L2O_SESSION_MAX_PARAMETERS)",
                              detail={"parameters": len(shapes), "limit": limits.max_parameters})
    out: dict[str, tuple[int, ...]] = {}
    for name, shape in shapes.items():
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_CHARS:
            raise ValidationError(f"parameter name {name!r} must be a string of 1 to {MAX_NAME_CHARS} characters")
        if not name.isprintable():
            raise ValidationError(f"parameter name {name[:80]!r} holds a control or separator character: parameter "
                                  "names are printable text", detail={"name": name[:200]})
        if name == wire.METADATA_KEY:
            raise ValidationError(f"parameter name {name!r} is reserved: safetensors bodies keep their metadata "
                                  "under it", detail={"name": name})
        if (not isinstance(shape, Sequence) or isinstance(shape, str) or len(shape) > wire.MAX_DIMS
                or not all(type(d) is int and d >= 0 for d in shape)):
            raise ValidationError(f"the shape of {name!r} must be a list of at most {wire.MAX_DIMS} non-negative "
                                  f"integers, got {shape!r}", detail={"name": name})
        out[name] = tuple(shape)
    name_bytes = sum(len(name.encode("utf-8", "surrogatepass")) for name in out)
    if name_bytes > limits.max_name_bytes:
        raise SessionTooLarge(f"the parameter names hold {name_bytes} bytes, over this server's limit of "
                              f"{limits.max_name_bytes} per session (L2O_SESSION_MAX_NAME_BYTES)",
                              detail={"name_bytes": name_bytes, "limit": limits.max_name_bytes})
    entries = sum(len(s) for s in out.values())
    if entries > limits.max_shape_entries:
        raise SessionTooLarge(f"the shapes hold {entries} dimensions in all, over this server's limit of "
                              f"{limits.max_shape_entries} per session (L2O_SESSION_MAX_SHAPE_ENTRIES)",
                              detail={"shape_entries": entries, "limit": limits.max_shape_entries})
    if sum(math.prod(s) for s in out.values()) == 0:
        raise ValidationError("the parameters hold no coordinates (every shape has a zero)")
    return out


def flatten_grads(shapes: Mapping[str, tuple[int, ...]], message: StepMessage) -> torch.Tensor:
    """The gradients as one float32 vector in the session's parameter order, or InvalidGradients.
    Finiteness is not checked here (see `non_finite`)."""
    specs = message.specs
    missing = [n for n in shapes if n not in specs]
    extra = [n for n in specs if n not in shapes]
    if missing or extra:
        raise InvalidGradients(
            "the gradients must name every parameter of the session exactly once: "
            f"missing {', '.join(map(repr, missing)) or 'none'}; unexpected {', '.join(map(repr, extra)) or 'none'}",
            detail={"missing": missing, "unexpected": extra})
    for name, shape in shapes.items():
        dtype, got = specs[name]
        if not dtype.is_floating_point:
            raise InvalidGradients(f"the gradient of {name!r} has dtype {dtype}, expected a float dtype",
                                   detail={"name": name})
        if got != shape:
            raise InvalidGradients(
                f"the gradient of {name!r} has shape {list(got)}, the parameter has shape {list(shape)}",
                detail={"name": name, "got": list(got), "expected": list(shape)})
    if message.packed is not None and message.order == tuple(shapes):
        return message.packed   # float32, back to back in the session's order: the body itself, no copy
    # float32 is what lopt.step computes in; a finite float64 can still overflow it.
    return torch.cat([message.tensors[name].reshape(-1).to(torch.float32) for name in shapes])


def non_finite(shapes: Mapping[str, tuple[int, ...]], flat: torch.Tensor) -> InvalidGradients:
    """The error for gradients that hold a NaN or an infinity, naming the first parameter that does."""
    for name, part in split_updates(shapes, flat.cpu()).items():
        if not all_finite(part):
            return InvalidGradients(f"the gradient of {name!r} has NaN or infinite values (as float32)",
                                    detail={"name": name})
    return InvalidGradients("the gradients have NaN or infinite values (as float32)")


def split_updates(shapes: Mapping[str, tuple[int, ...]], updates: torch.Tensor) -> dict[str, torch.Tensor]:
    sizes = [math.prod(s) for s in shapes.values()]
    return {name: part.view(shape) for (name, shape), part in zip(shapes.items(), updates.split(sizes), strict=True)}


# --- exported state -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExportedState:
    optimizer: str
    version: int
    digest: str
    step: int
    shapes: dict[str, tuple[int, ...]]
    hc: torch.Tensor


def read_state(body: bytes | bytearray, limits: SessionLimits = SessionLimits()) -> ExportedState:
    """Parse a state from GET /v1/sessions/{id}/state, refusing anything it does not describe exactly."""
    meta, tensors = wire.read_safetensors(body, dtypes={"F32": torch.float32, "BF16": torch.bfloat16,
                                                        "F16": torch.float16})
    if meta.get("format") != STATE_FORMAT:
        raise MalformedBody(f"not a session state: metadata format is {meta.get('format')!r}, "
                            f"expected {STATE_FORMAT!r}")
    if set(tensors) != {"hc"}:
        raise MalformedBody(f"a session state holds exactly one tensor 'hc', got {sorted(tensors)}")
    missing = [k for k in ("optimizer", "version", "digest", "shapes") if k not in meta]
    if missing:
        raise MalformedBody(f"the state's metadata lacks {', '.join(missing)}")
    if not (meta["version"].isascii() and meta["version"].isdecimal() and len(meta["version"]) <= MAX_VERSION_DIGITS):
        raise MalformedBody(f"the state's metadata version must be a number up to {MAX_VERSION}, got "
                            f"{meta['version'][:40]!r}")
    try:
        pairs = json.loads(meta["shapes"])
        shapes = check_shapes({name: shape for name, shape in pairs}, limits)
    except (ValueError, TypeError, RecursionError) as exc:
        raise MalformedBody(f"the state's metadata shapes must be a JSON list of [name, shape]: {exc}") from exc
    hc = tensors["hc"]
    if not all_finite(hc):
        raise ValidationError("the state holds NaN or infinite values", code="invalid_state")
    return ExportedState(meta["optimizer"], int(meta["version"]), meta["digest"],
                         wire.parse_step(meta.get("step"), "the state's metadata"), shapes, hc)


def dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, d in STATE_DTYPES.items() if d == dtype)


def check_resume(state: ExportedState, version: VersionRef, reference: str, config: OptimizerConfig,
                 shapes: dict[str, tuple[int, ...]] | None, state_dtype: str | None = None) -> None:
    if state_dtype is not None and STATE_DTYPES[state_dtype] != state.hc.dtype:
        raise StateMismatch(f"the state is kept in {dtype_name(state.hc.dtype)}, not {state_dtype}: a resumed "
                            "session keeps its state's dtype", detail={"state_dtype": dtype_name(state.hc.dtype)})
    if version.digest != state.digest:
        raise StateMismatch(
            f"the state was made by {state.optimizer}:{state.version} (sha256 {state.digest[:12]}...), but "
            f"{reference!r} resolves to {version.reference} (sha256 {version.digest[:12]}...): a state resumes "
            "only on the version that made it",
            detail={"state": {"optimizer": state.optimizer, "version": state.version, "digest": state.digest},
                    "resolved": {"optimizer": version.name, "version": version.version, "digest": version.digest}})
    if shapes is not None and shapes != state.shapes:
        differ = sorted(set(shapes.items()) ^ set(state.shapes.items()))
        raise StateMismatch(f"the shapes given differ from the state's: {differ[:5]}",
                            detail={"state": {n: list(s) for n, s in state.shapes.items()}})
    n = sum(math.prod(s) for s in state.shapes.values())
    expected = config.state_shape(n)
    if tuple(state.hc.shape) != expected:
        raise StateMismatch(f"the state tensor has shape {list(state.hc.shape)}, but {n} coordinates of "
                            f"{version.reference} need {list(expected)}", detail={"expected": list(expected)})
