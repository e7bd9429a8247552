"""`client.sessions`: sessions pin one optimizer version and hold its LSTM state between steps.

    s = l2o.sessions.create("general-mlp", {"fc.weight": [2, 3], "fc.bias": [2]})
    r = l2o.sessions.step(s.id, step=0, grads={"fc.weight": gw, "fc.bias": gb})    # θ ← θ + r.updates[name]
    state = l2o.sessions.state(s.id)                  # take the state away ...
    s2 = l2o.sessions.resume(state)                   # ... and continue it in a new session
    l2o.sessions.get(s2.id), l2o.sessions.list(), l2o.sessions.delete(s2.id)

A step carries the number of steps the session has applied so far, which makes it safe to retry: a step
whose answer was lost is sent again with the same number and the server answers it again, applying it
once. The SDK does that by itself on connection errors, 429 and 5xx.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import httpx
import numpy as np

from client import _constants as c
from client import _safetensors
from client._base import RequestOptions
from client._body import AnswerBuffer, Pieces
from client._exceptions import APIResponseError
from client.resources._resource import AsyncResource, SyncResource, segment
from client.types import Session, SessionState, StepResult

BASE = "/v1/sessions"
WireName = Literal["safetensors", "json"]


def as_array(value: Any) -> np.ndarray:
    """A numpy view of a gradient: numpy arrays, nested lists, or CPU/GPU torch tensors (without importing torch)."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach()
        if str(value.dtype) == "torch.bfloat16":  # numpy has no bfloat16; float32 holds every bfloat16 exactly
            value = value.float()
        value = value.cpu().numpy()
    return np.asarray(value)


def _create(optimizer: str, shapes: Mapping[str, Sequence[int]], state_dtype: str | None) -> RequestOptions:
    body: dict[str, Any] = {"optimizer": optimizer, "shapes": {name: [int(d) for d in s] for name, s in shapes.items()}}
    if state_dtype is not None:
        body["state_dtype"] = state_dtype
    return RequestOptions("POST", BASE, json=body)


def _resume(state: SessionState | bytes, optimizer: str | None) -> RequestOptions:
    body = state.to_bytes() if isinstance(state, SessionState) else bytes(state)
    return RequestOptions("POST", f"{BASE}/resume", content=body, headers={"Content-Type": c.SAFETENSORS_TYPE},
                          params={"optimizer": optimizer} if optimizer else None)


def _step(session_id: str, step: int, grads: Mapping[str, Any], wire: WireName,
          into: AnswerBuffer | None) -> RequestOptions:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be the number of steps the session has applied (an int >= 0), got {step!r}")
    path, into = f"{BASE}/{segment(session_id)}/step", into or AnswerBuffer()
    if wire == "json":
        body = {"step": step, "grads": {name: as_array(g).tolist() for name, g in grads.items()}}
        return RequestOptions("POST", path, json=body, idempotent=True, session_id=session_id, into=into)
    if wire != "safetensors":
        raise ValueError(f"wire must be 'safetensors' or 'json', got {wire!r}")
    body = Pieces(_safetensors.encode({name: as_array(g) for name, g in grads.items()}, {"step": str(step)}))
    return RequestOptions("POST", path, content=body, headers={"Content-Type": c.SAFETENSORS_TYPE},
                          idempotent=True, session_id=session_id, into=into)


def _step_result(response: httpx.Response, options: RequestOptions) -> StepResult:
    assert options.into is not None  # every step reads its answer into a buffer (_step)
    body = options.into.view
    try:
        if response.headers.get("content-type", "").startswith(c.JSON_TYPE):
            doc = json.loads(bytes(body))
            return StepResult(int(doc["step"]), {name: np.asarray(u, dtype=np.float32)
                                                 for name, u in doc["updates"].items()})
        # Writable (an AnswerBuffer is a bytearray), so callers may hand the arrays to torch.from_numpy.
        meta, arrays = _safetensors.loads(body)
        return StepResult(int(meta["step"]), arrays)
    except (ValueError, KeyError, TypeError) as exc:
        raise APIResponseError(f"the step answer could not be read: {exc}", request=response.request) from exc


def _state(response: httpx.Response) -> SessionState:
    try:
        return SessionState.from_bytes(bytearray(response.content))
    except (ValueError, KeyError, TypeError) as exc:
        raise APIResponseError(f"the session state could not be read: {exc}", request=response.request) from exc


def _session(session_id: str, suffix: str = "", method: str = "GET") -> RequestOptions:
    return RequestOptions(method, f"{BASE}/{segment(session_id)}{suffix}", session_id=session_id)


def _next_page(response: httpx.Response) -> RequestOptions | None:
    """The request for the page after this one, from its `Link: <...>; rel="next"` header, if any."""
    following = response.links.get("next")
    if following is None:
        return None
    url = httpx.URL(following["url"])
    return RequestOptions("GET", BASE, params=dict(url.params))


class Sessions(SyncResource):
    def create(self, optimizer: str, shapes: Mapping[str, Sequence[int]], *,
               state_dtype: str | None = None) -> Session:
        """A session on the version `optimizer` resolves to, for parameters of these shapes (by name).
        `state_dtype` "bfloat16" or "float16" has the server keep the LSTM state in half the bytes."""
        session = Session.from_json(self._client.json_of(self._client.send(_create(optimizer, shapes, state_dtype))))
        self._client.opened_session(session.id)
        return session

    def resume(self, state: SessionState | bytes, *, optimizer: str | None = None) -> Session:
        """A new session continuing `state` (from `state()`): same version, shapes and step count.
        `optimizer`, if given, must resolve to the state's version."""
        session = Session.from_json(self._client.json_of(self._client.send(_resume(state, optimizer))))
        self._client.opened_session(session.id)
        return session

    def step(self, session_id: str, *, step: int, grads: Mapping[str, Any], wire: WireName = "safetensors",
             into: AnswerBuffer | None = None) -> StepResult:
        """Send every parameter's gradient; get back every parameter's update and the next step number.
        `into`: read the answer into this buffer, step after step; the updates are then views of it,
        valid until its next use (RemoteOptimizer keeps one per session)."""
        options = _step(session_id, step, grads, wire, into)
        return _step_result(self._client.send(options), options)

    def get(self, session_id: str) -> Session:
        return Session.from_json(self._client.json_of(self._client.send(_session(session_id))))

    def list(self) -> list[Session]:
        """Every live session of this key, oldest first (the server answers a page at a time)."""
        out, options = [], RequestOptions("GET", BASE)
        while True:
            response = self._client.send(options)
            out += [Session.from_json(s) for s in self._client.json_of(response)]
            options = _next_page(response)
            if options is None:
                return out

    def state(self, session_id: str) -> SessionState:
        return _state(self._client.send(_session(session_id, "/state")))

    def delete(self, session_id: str) -> None:
        self._client.send(_session(session_id, method="DELETE"))
        self._client.deleted_session(session_id)


class AsyncSessions(AsyncResource):
    async def create(self, optimizer: str, shapes: Mapping[str, Sequence[int]], *,
                     state_dtype: str | None = None) -> Session:
        session = Session.from_json(self._client.json_of(
            await self._client.send(_create(optimizer, shapes, state_dtype))))
        self._client.opened_session(session.id)
        return session

    async def resume(self, state: SessionState | bytes, *, optimizer: str | None = None) -> Session:
        session = Session.from_json(self._client.json_of(await self._client.send(_resume(state, optimizer))))
        self._client.opened_session(session.id)
        return session

    async def step(self, session_id: str, *, step: int, grads: Mapping[str, Any], wire: WireName = "safetensors",
                   into: AnswerBuffer | None = None) -> StepResult:
        options = _step(session_id, step, grads, wire, into)
        return _step_result(await self._client.send(options), options)

    async def get(self, session_id: str) -> Session:
        return Session.from_json(self._client.json_of(await self._client.send(_session(session_id))))

    async def list(self) -> list[Session]:
        """Every live session of this key, oldest first (the server answers a page at a time)."""
        out, options = [], RequestOptions("GET", BASE)
        while True:
            response = await self._client.send(options)
            out += [Session.from_json(s) for s in self._client.json_of(response)]
            options = _next_page(response)
            if options is None:
                return out

    async def state(self, session_id: str) -> SessionState:
        return _state(await self._client.send(_session(session_id, "/state")))

    async def delete(self, session_id: str) -> None:
        await self._client.send(_session(session_id, method="DELETE"))
        self._client.deleted_session(session_id)
