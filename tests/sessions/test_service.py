"""The step service on every store: updates equal lopt.step bit for bit, retries replay, bad input changes nothing."""

from __future__ import annotations

import asyncio
import json
import math

import pytest
import torch

from service import lopt
from service.errors import (
    InvalidGradients,
    MalformedBody,
    SessionExpired,
    SessionNotFound,
    SessionTooLarge,
    StateMismatch,
    StepConflict,
    TooManySessions,
    ValidationError,
)
from service.lopt import LSTMState
from service.sessions import wire
from service.sessions.record import description_bytes, state_to_bytes
from service.sessions.service import SessionLimits, SessionService
from service.sessions.wire import StepMessage, WireFormat
from tests.sessions.fakes import FakeClock, FakeVersions

JSON, ST = WireFormat.JSON, WireFormat.SAFETENSORS
SHAPES = {"fc.weight": [4, 3], "fc.bias": [4], "scale": []}
N = 12 + 4 + 1


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def versions():
    return FakeVersions()


@pytest.fixture
def svc(store, versions, clock):
    return SessionService(store, versions, SessionLimits(idle_timeout_s=3600, max_coords=1000,
                                                         max_sessions_per_key=4, max_state_bytes=10**7), clock=clock)


def grads_for(seed: int, shapes=SHAPES, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Magnitudes from 1e-6 to 1e2, both signs: both branches of the preprocessing.
    return {n: (torch.randn(s, generator=g) * 10 ** torch.randint(-6, 3, s, generator=g).float()).to(dtype)
            for n, s in shapes.items()}


def body(step: int, grads: dict[str, torch.Tensor], fmt: WireFormat) -> bytes:
    return wire.encode(StepMessage(step, grads), fmt, field="grads")


def reference_chain(versions, grads_list, version_id="1"):
    """What lopt.step gives, step after step, from a zero state: the updates the server must return."""
    ckpt = versions.checkpoints[version_id]
    state = lopt.init(ckpt.config, N)
    out = []
    for grads in grads_list:
        flat = torch.cat([grads[n].reshape(-1) for n in SHAPES])
        with torch.no_grad():
            updates, state = lopt.step(ckpt.config, ckpt.weights, flat, state)
        out.append(updates)
    return out, state


def flat_updates(answer, fmt):
    message = wire.decode(answer.body, fmt, field="updates")
    assert set(message.tensors) == set(SHAPES)
    for name, shape in SHAPES.items():
        assert list(message.tensors[name].shape) == shape and message.tensors[name].dtype == torch.float32
    return message.step, torch.cat([message.tensors[n].reshape(-1) for n in SHAPES])


def snapshot(store, session_id):
    r = store.get(session_id)
    return state_to_bytes(r.hc), r.info, r.answer, r.answer_type


@pytest.mark.parametrize("fmt", [JSON, ST])
async def test_updates_equal_lopt_step_bit_for_bit(svc, store, versions, fmt):
    info = await svc.create("k1", "opt@prod", SHAPES)
    assert info.step == 0 and info.n_coords == N and info.version == 1 and info.digest == versions.refs["1"].digest
    assert len(info.id) >= 24  # >= 128 bits of randomness
    grads_list = [grads_for(i) for i in range(3)]
    expected, state = reference_chain(versions, grads_list)
    for i, grads in enumerate(grads_list):
        answer = await svc.step("k1", info.id, body(i, grads, fmt), fmt)
        assert answer.content_type == fmt.content_type
        step, updates = flat_updates(answer, fmt)
        assert step == i + 1
        assert torch.equal(updates, expected[i]), f"step {i}: updates differ from lopt.step"
    assert torch.equal(store.get(info.id).hc, state.hc)
    assert versions.loads == ["1"]  # weights read from the registry once


async def test_safetensors_grads_of_any_float_dtype_match_lopt_step(svc, versions):
    info = await svc.create("k1", "opt:1", SHAPES)
    for i, dtype in enumerate([torch.float64, torch.bfloat16, torch.float16]):
        grads = grads_for(10 + i, dtype=dtype)
        answer = await svc.step("k1", info.id, body(i, grads, ST), ST)
        if i == 0:
            ckpt = versions.checkpoints["1"]
            flat = torch.cat([grads[n].reshape(-1) for n in SHAPES])
            with torch.no_grad():
                expected, _ = lopt.step(ckpt.config, ckpt.weights, flat, lopt.init(ckpt.config, N))
            assert torch.equal(flat_updates(answer, ST)[1], expected)


async def test_a_retry_returns_the_same_bytes_and_changes_nothing(svc, store):
    info = await svc.create("k1", "opt", SHAPES)
    first = await svc.step("k1", info.id, body(0, grads_for(0), ST), ST)
    before = snapshot(store, info.id)
    again = await svc.step("k1", info.id, body(0, grads_for(0), ST), ST)
    assert again.body == first.body and again.content_type == first.content_type
    assert snapshot(store, info.id) == before and before[1].step == 1

    # A retry in the other format carries the same updates.
    as_json = await svc.step("k1", info.id, body(0, grads_for(0), JSON), JSON)
    assert as_json.content_type == wire.JSON_TYPE
    assert torch.equal(flat_updates(as_json, JSON)[1], flat_updates(first, ST)[1])
    updates = wire.decode(first.body, ST, field="updates").tensors
    assert as_json.body == wire.encode(StepMessage(1, {n: updates[n] for n in SHAPES}), JSON)
    assert snapshot(store, info.id) == before

    second = await svc.step("k1", info.id, body(1, grads_for(1), JSON), JSON)
    assert flat_updates(second, JSON)[0] == 2
    assert (await svc.step("k1", info.id, body(1, grads_for(1), JSON), JSON)).body == second.body


@pytest.mark.parametrize("sent", [0, 3, 7])
async def test_a_step_out_of_sequence_is_a_conflict_naming_the_expected_step(svc, store, sent):
    info = await svc.create("k1", "opt", SHAPES)
    for i in range(2):
        await svc.step("k1", info.id, body(i, grads_for(i), JSON), JSON)
    before = snapshot(store, info.id)
    with pytest.raises(StepConflict, match="expects step 2") as exc:
        await svc.step("k1", info.id, body(sent, grads_for(9), JSON), JSON)
    assert exc.value.status == 409 and exc.value.detail == {"expected": 2, "got": sent}
    assert snapshot(store, info.id) == before


async def test_concurrent_steps_on_one_session_apply_once_each_in_order(svc, versions):
    info = await svc.create("k1", "opt:1", SHAPES)
    grads_list = [grads_for(i) for i in range(6)]
    answers = await asyncio.gather(*(svc.step("k1", info.id, body(i, g, ST), ST) for i, g in enumerate(grads_list)))
    expected, _ = reference_chain(versions, grads_list)
    for i, answer in enumerate(answers):
        step, updates = flat_updates(answer, ST)
        assert step == i + 1 and torch.equal(updates, expected[i])

    # The same step sent five times at once: applied once, the other four replay its bytes.
    dupes = await asyncio.gather(*(svc.step("k1", info.id, body(6, grads_for(6), ST), ST) for _ in range(5)))
    assert len({bytes(a.body) for a in dupes}) == 1
    assert (await svc.get("k1", info.id)).step == 7


async def test_sessions_on_different_sessions_proceed_independently(svc, versions):
    a = await svc.create("k1", "opt:1", SHAPES)
    b = await svc.create("k1", "opt:1", SHAPES)
    ga, gb = grads_for(1), grads_for(2)
    ra, rb = await asyncio.gather(svc.step("k1", a.id, body(0, ga, ST), ST), svc.step("k1", b.id, body(0, gb, ST), ST))
    assert torch.equal(flat_updates(ra, ST)[1], reference_chain(versions, [ga])[0][0])
    assert torch.equal(flat_updates(rb, ST)[1], reference_chain(versions, [gb])[0][0])


async def test_a_session_is_invisible_to_other_keys(svc, store):
    mine = await svc.create("k1", "opt", SHAPES)
    await svc.step("k1", mine.id, body(0, grads_for(0), JSON), JSON)
    before = snapshot(store, mine.id)
    for call in (svc.get("k2", mine.id), svc.step("k2", mine.id, body(1, grads_for(1), JSON), JSON),
                 svc.delete("k2", mine.id), svc.export_state("k2", mine.id)):
        with pytest.raises(SessionNotFound) as exc:
            await call
        assert exc.value.status == 404 and exc.value.message == f"no session {mine.id!r}"
    with pytest.raises(SessionNotFound):
        await svc.get("k1", "s_unknown")
    assert [i.id for i in await svc.list("k1")] == [mine.id] and await svc.list("k2") == []
    assert snapshot(store, mine.id) == before


async def test_an_idle_session_expires_with_its_own_error(svc, store, clock):
    info = await svc.create("k1", "opt", SHAPES)
    await svc.step("k1", info.id, body(0, grads_for(0), JSON), JSON)
    clock.advance(3000)
    await svc.step("k1", info.id, body(1, grads_for(1), JSON), JSON)  # a step keeps it alive
    clock.advance(3601)
    with pytest.raises(SessionExpired, match="expired after 3600 s") as exc:
        await svc.step("k1", info.id, body(2, grads_for(2), JSON), JSON)
    assert exc.value.status == 410 and exc.value.code == "session_expired"
    with pytest.raises(SessionExpired):
        await svc.get("k1", info.id)
    with pytest.raises(SessionNotFound):  # another key learns nothing, not even that it expired
        await svc.get("k2", info.id)
    assert store.get(info.id) is None and store.total_bytes() == 0
    await svc.delete("k1", info.id)  # deleting an expired session succeeds, and then it is unknown
    with pytest.raises(SessionNotFound):
        await svc.get("k1", info.id)


async def test_the_sweeper_expires_idle_sessions_and_frees_the_limits(svc, store, clock):
    for _ in range(4):
        await svc.create("k1", "opt", SHAPES)
    with pytest.raises(TooManySessions, match="limit is 4"):
        await svc.create("k1", "opt", SHAPES)
    clock.advance(3601)
    assert await svc.list("k1") == []
    assert svc.purge_idle() == 0 and store.total_bytes() == 0
    await svc.create("k1", "opt", SHAPES)


async def test_limits_refuse_with_clear_errors(store, versions, clock):
    held = N * 80 * 4 + description_bytes({n: tuple(s) for n, s in SHAPES.items()})   # state, names and shapes
    svc = SessionService(store, versions, SessionLimits(max_coords=N, max_sessions_per_key=10,
                                                        max_state_bytes=2 * held), clock=clock)
    with pytest.raises(SessionTooLarge, match=f"{N + 1} coordinates, over this server's limit of {N}"):
        await svc.create("k1", "opt", {**SHAPES, "extra": [1]})
    await svc.create("k1", "opt", SHAPES)
    await svc.create("k2", "opt", SHAPES)
    with pytest.raises(Exception) as exc:
        await svc.create("k3", "opt", SHAPES)
    assert exc.value.status == 503 and exc.value.code == "at_capacity"
    assert await svc.list("k3") == [] and store.total_bytes() == 2 * held


@pytest.mark.parametrize("shapes, match", [
    ({}, "at least one parameter"),
    ({"w": [-1]}, "non-negative"),
    ({"w": [2.0]}, "non-negative"),
    ({"w": [True]}, "non-negative"),
    ({"w": [0, 3]}, "no coordinates"),
    ({"": [3]}, "parameter name"),
    ({"__metadata__": [3]}, "reserved"),
])
async def test_bad_shapes_are_refused(svc, store, shapes, match):
    with pytest.raises(ValidationError, match=match):
        await svc.create("k1", "opt", shapes)
    assert await svc.list("k1") == []


def _header_body(header: dict, data: bytes, n: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return (len(raw) if n is None else n).to_bytes(8, "little") + raw + data


def _bad_bodies():
    good = grads_for(5)
    ok_json = json.loads(body(1, good, JSON))
    ok_st = body(1, good, ST)
    f32 = {n: {"dtype": "F32", "shape": s, "data_offsets": None} for n, s in SHAPES.items()}
    offsets, pos = {}, 0
    for n, s in SHAPES.items():
        offsets[n] = [pos, pos + 4 * math.prod(s)]
        pos += 4 * math.prod(s)
    header = {"__metadata__": {"step": "1"}, **{n: {**f32[n], "data_offsets": offsets[n]} for n in SHAPES}}
    data = bytes(pos)
    yield "missing parameter", JSON, json.dumps({"step": 1, "grads": {k: v for k, v in ok_json["grads"].items()
                                                                       if k != "fc.bias"}}), "missing 'fc.bias'"
    yield "extra parameter", JSON, json.dumps({"step": 1, "grads": {**ok_json["grads"], "x": [1.0]}}), "unexpected 'x'"
    yield "misshapen", JSON, json.dumps({"step": 1, "grads": {**ok_json["grads"], "fc.bias": [1.0, 2.0]}}), \
        "shape \\[2\\], the parameter has shape \\[4\\]"
    yield "NaN", JSON, json.dumps({"step": 1, "grads": {**ok_json["grads"], "scale": float("nan")}}), "NaN"
    yield "infinity", ST, body(1, {**good, "scale": torch.tensor(float("inf"))}, ST), "'scale' has NaN or infinite"
    yield "overflows float32", ST, body(1, {**{k: v.double() for k, v in good.items()},
                                             "scale": torch.tensor(1e300, dtype=torch.float64)}, ST), "as float32"
    yield "boolean in JSON", JSON, json.dumps({"step": 1, "grads": {**ok_json["grads"], "fc.bias": [1, 2, True, 4]}}), \
        "boolean"
    ragged = [[1, 2, 3]] * 3 + [[1]]
    yield "ragged JSON", JSON, json.dumps({"step": 1, "grads": {**ok_json["grads"], "fc.weight": ragged}}), "ragged"
    yield "not JSON", JSON, b'{"step": 1, "grads": {', "not valid JSON"
    yield "no step", JSON, json.dumps({"grads": ok_json["grads"]}), "no \"step\""
    yield "unknown field", JSON, json.dumps({**ok_json, "lr": 1}), "unknown fields"
    yield "integer dtype", ST, wire.write_safetensors({**good, "fc.bias": torch.arange(4)}, {"step": "1"}), \
        "non-float dtype 'I64'"
    yield "truncated", ST, ok_st[:-7], "bytes after|past the"
    yield "shorter than length", ST, ok_st[:5], "shorter than its 8-byte"
    yield "header beyond body", ST, _header_body(header, data, n=10**6), "truncated body"
    yield "huge header", ST, _header_body(header, data, n=2**40), "over the .* cap"
    yield "header not JSON", ST, (5).to_bytes(8, "little") + b"{oops" + data, "not valid JSON"
    overlap = {**header, "fc.bias": {**header["fc.bias"], "data_offsets": [0, 16]}}
    yield "overlapping offsets", ST, _header_body(overlap, data), "overlaps|hole"
    beyond = {**header, "scale": {**header["scale"], "data_offsets": [pos - 4, pos + 4]}}
    yield "offsets out of range", ST, _header_body(beyond, data), "past the"
    wrong = {**header, "fc.bias": {**header["fc.bias"], "shape": [5]}}
    yield "shape and bytes disagree", ST, _header_body(wrong, data), "needs 20 bytes, its offsets span 16"
    yield "no step in metadata", ST, wire.write_safetensors(good, {}), "no \"step\""
    yield "duplicate names", ST, (lambda raw: len(raw).to_bytes(8, "little") + raw + data)(
        json.dumps(header).replace('"scale"', '"fc.bias"').encode()), "duplicate"


@pytest.mark.parametrize("writable", [False, True], ids=["bytes", "bytearray"])
@pytest.mark.parametrize("case", list(_bad_bodies()), ids=lambda c: c[0])
async def test_each_bad_input_is_a_4xx_and_leaves_the_session_byte_identical(svc, store, case, writable):
    """As bytes, and as the server hands bodies over (a bytearray, which tensors may view in place)."""
    _, fmt, raw, match = case
    raw = raw.encode() if isinstance(raw, str) else raw
    raw = bytearray(raw) if writable else raw
    info = await svc.create("k1", "opt", SHAPES)
    await svc.step("k1", info.id, body(0, grads_for(0), fmt), fmt)
    before = snapshot(store, info.id)
    with pytest.raises((InvalidGradients, MalformedBody), match=match) as exc:
        await svc.step("k1", info.id, raw, fmt)
    assert 400 <= exc.value.status < 500
    assert snapshot(store, info.id) == before
    # And the session still takes the step it expected.
    await svc.step("k1", info.id, body(1, grads_for(1), fmt), fmt)


async def test_an_exported_state_resumes_where_it_left_off(svc, store, versions):
    info = await svc.create("k1", "opt:1", SHAPES)
    grads_list = [grads_for(i) for i in range(4)]
    for i in range(2):
        await svc.step("k1", info.id, body(i, grads_list[i], ST), ST)
    state = await svc.export_state("k1", info.id)
    meta, tensors = wire.read_safetensors(state)
    assert meta["step"] == "2" and meta["version"] == "1" and meta["digest"] == versions.refs["1"].digest
    assert torch.equal(tensors["hc"], store.get(info.id).hc)

    resumed = await svc.create("k2", None, None, resume_state=state)
    assert resumed.step == 2 and resumed.version_id == "1" and resumed.shapes == info.shapes
    expected, _ = reference_chain(versions, grads_list)
    for i in (2, 3):
        step, updates = flat_updates(await svc.step("k2", resumed.id, body(i, grads_list[i], JSON), JSON), JSON)
        assert step == i + 1 and torch.equal(updates, expected[i])
    # Step 1's answer was never held by the resumed session: a retry of it is a conflict, not a guess.
    other = await svc.create("k2", "opt@prod", SHAPES, resume_state=state)
    with pytest.raises(StepConflict, match="not held"):
        await svc.step("k2", other.id, body(1, grads_list[1], ST), ST)


async def test_a_state_resumes_only_on_its_own_version_and_shapes(svc, versions):
    info = await svc.create("k1", "opt:1", SHAPES)
    state = await svc.export_state("k1", info.id)
    with pytest.raises(StateMismatch, match="resumes only on the version that made it"):
        await svc.create("k1", "opt:2", None, resume_state=state)
    with pytest.raises(StateMismatch, match="shapes given differ"):
        await svc.create("k1", None, {**SHAPES, "fc.bias": [5]}, resume_state=state)
    with pytest.raises(StateMismatch, match="kept in float32, not bfloat16"):
        await svc.create("k1", None, None, resume_state=state, state_dtype="bfloat16")
    same = await svc.create("k1", None, None, resume_state=state, state_dtype="float32")
    assert same.state_dtype == "float32"
    await svc.delete("k1", same.id)
    meta, tensors = wire.read_safetensors(state)
    shorter = wire.write_safetensors({"hc": tensors["hc"][:-1]}, meta)
    with pytest.raises(StateMismatch, match="state tensor has shape"):
        await svc.create("k1", None, None, resume_state=shorter)
    nan = tensors["hc"].clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValidationError, match="NaN"):
        await svc.create("k1", None, None, resume_state=wire.write_safetensors({"hc": nan}, meta))
    with pytest.raises(MalformedBody, match="not a session state"):
        await svc.create("k1", None, None, resume_state=wire.write_safetensors({"hc": nan}, {"step": "0"}))
    assert [i.id for i in await svc.list("k1")] == [info.id]


async def test_the_registry_may_delete_a_version_only_when_no_live_session_uses_it(svc, clock):
    assert svc.is_version_in_use(1) is False
    a = await svc.create("k1", "opt:1", SHAPES)
    b = await svc.create("k2", "opt:1", SHAPES)
    assert svc.is_version_in_use(1) is True and svc.is_version_in_use(2) is False
    await svc.delete("k1", a.id)
    assert svc.is_version_in_use(1) is True
    clock.advance(3601)
    assert svc.is_version_in_use(1) is False  # an expired session holds nothing
    with pytest.raises(SessionExpired):
        await svc.get("k2", b.id)


async def test_state_in_a_step_is_the_lstm_state_lopt_step_returns(svc, store, versions):
    info = await svc.create("k1", "small", {"w": [5]})
    ckpt = versions.checkpoints["3"]
    g = {"w": torch.tensor([1e-9, -3.0, 0.5, 1e4, 0.0])}
    await svc.step("k1", info.id, body(0, g, JSON), JSON)
    with torch.no_grad():
        _, state = lopt.step(ckpt.config, ckpt.weights, g["w"], lopt.init(ckpt.config, 5))
    assert store.get(info.id).hc.shape == (5, 1, 2, 4)
    assert torch.equal(store.get(info.id).hc, LSTMState(state.hc).hc)


async def test_the_background_sweeper_expires_idle_sessions(svc, store, clock):
    info = await svc.create("k1", "opt", SHAPES)
    sweeper = asyncio.create_task(svc.run_sweeper(interval_s=0.01))
    try:
        clock.advance(3601)
        for _ in range(200):
            if store.get(info.id) is None:
                break
            await asyncio.sleep(0.01)
    finally:
        sweeper.cancel()
    assert store.get(info.id) is None and store.tombstone(info.id, now=clock.now) == "k1"
