"""The step's wire formats: exact float round trips, a header checked before it is trusted, no copies."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load as st_load

from service.errors import InvalidGradients, MalformedBody, UnsupportedMediaType
from service.sessions import wire
from service.sessions.service import flatten_grads
from service.sessions.wire import StepMessage, WireFormat


@pytest.mark.parametrize("content_type, fmt", [
    ("application/json", WireFormat.JSON), ("application/json; charset=utf-8", WireFormat.JSON),
    ("application/vnd.l2o.safetensors", WireFormat.SAFETENSORS),
    ("Application/Octet-Stream", WireFormat.SAFETENSORS),
])
def test_content_types_name_a_format(content_type, fmt):
    assert wire.format_of(content_type) is fmt


@pytest.mark.parametrize("content_type", [None, "", "text/plain", "multipart/form-data"])
def test_other_content_types_are_415(content_type):
    with pytest.raises(UnsupportedMediaType, match="not accepted") as exc:
        wire.format_of(content_type)
    assert exc.value.status == 415


EDGE = torch.tensor([0.0, -0.0, 1e-45, -1.1754942e-38, 3.4028235e38, 0.1, -7.0, 1 / 3], dtype=torch.float32)


@pytest.mark.parametrize("fmt", list(WireFormat))
def test_float32_values_survive_both_formats_bit_for_bit(fmt):
    message = StepMessage(7, {"v": EDGE, "m": EDGE[:6].reshape(2, 3), "s": EDGE[6].clone()})
    data = wire.encode(message, fmt)
    assert wire.encode(message, fmt) == data  # deterministic: a replay can be compared byte for byte
    back = wire.decode(data, fmt, field="updates")
    assert back.step == 7
    for name, t in message.tensors.items():
        got = back.tensors[name]
        assert got.dtype == torch.float32 and got.shape == t.shape
        assert torch.equal(got.view(torch.int32), t.view(torch.int32)), name  # -0.0 and subnormals too


def test_json_step_body_shapes_follow_the_nesting():
    body = json.dumps({"step": 0, "grads": {"w": [[1, 2.5], [3, 4]], "b": [], "s": 2, "e": [[], []]}})
    m = wire.decode(body.encode(), WireFormat.JSON)
    assert {n: list(t.shape) for n, t in m.tensors.items()} == {"w": [2, 2], "b": [0], "s": [], "e": [2, 0]}
    assert m.tensors["w"].tolist() == [[1.0, 2.5], [3.0, 4.0]]


@pytest.mark.parametrize("body, error, match", [
    ({"step": 0, "grads": {"w": ["1"]}}, InvalidGradients, r"w\[0\] is a string"),
    ({"step": 0, "grads": {"w": [None]}}, InvalidGradients, "null"),
    ({"step": 0, "grads": {"w": [[1], 2]}}, InvalidGradients, r"w\[1\] is a number, expected a list"),
    ({"step": 0, "grads": {"w": {"a": 1}}}, InvalidGradients, "an object"),
    ({"step": 0, "grads": {"w": [10**400]}}, InvalidGradients, "out of range"),
    ({"step": True, "grads": {}}, MalformedBody, "non-negative integer"),
    ({"step": 1.0, "grads": {}}, MalformedBody, "non-negative integer"),
    ({"step": 0, "grads": [1]}, MalformedBody, "must be an object"),
    ({"step": 0}, MalformedBody, 'no "grads"'),
])
def test_bad_json_bodies_name_the_problem(body, error, match):
    with pytest.raises(error, match=match):
        wire.decode(json.dumps(body).encode(), WireFormat.JSON)


def test_json_nesting_is_bounded():
    with pytest.raises(InvalidGradients, match="deeper than"):
        wire.decode(('{"step":0,"grads":{"w":' + "[" * 40 + "1" + "]" * 40 + "}}").encode(), WireFormat.JSON)


def test_safetensors_from_a_writable_buffer_are_views_of_it():
    body = bytearray(wire.write_safetensors({"a": torch.randn(4, 3), "b": torch.randn(5)}, {"step": "2"}))
    m = wire.decode(body, WireFormat.SAFETENSORS)
    base = torch.frombuffer(body, dtype=torch.uint8).data_ptr()
    for t in m.tensors.values():
        assert base <= t.data_ptr() < base + len(body)  # no copy
    # From read-only bytes the tensors are copies, equal in value.
    again = wire.decode(bytes(body), WireFormat.SAFETENSORS)
    assert all(torch.equal(again.tensors[k], m.tensors[k]) for k in m.tensors)


def test_misaligned_data_is_copied_not_misread():
    t = torch.randn(3)
    header = json.dumps({"__metadata__": {"step": "0"}, "x": {"dtype": "F32", "shape": [3],
                                                             "data_offsets": [0, 12]}}).encode() + b" "
    assert (8 + len(header)) % 4 != 0
    body = bytearray(len(header).to_bytes(8, "little") + header + t.numpy().tobytes())
    assert torch.equal(wire.decode(body, WireFormat.SAFETENSORS).tensors["x"], t)


def test_our_safetensors_are_standard_and_deterministic():
    tensors = {"z": torch.randn(2, 3, dtype=torch.float64), "a": torch.randn(5).to(torch.bfloat16),
               "s": torch.tensor(1.5), "i": torch.arange(4)}
    data = wire.write_safetensors(tensors, {"step": "3", "b": "x"})
    assert wire.write_safetensors(dict(reversed(tensors.items())), {"b": "x", "step": "3"}) == data
    loaded = st_load(data)
    assert all(loaded[k].dtype == v.dtype and torch.equal(loaded[k], v) for k, v in tensors.items())


def _raw(header, data=b"", n=None) -> bytes:
    h = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return (len(h) if n is None else n).to_bytes(8, "little") + h + data


@pytest.mark.parametrize("body, error, match", [
    (_raw(b"[1, 2]"), MalformedBody, "not a JSON object"),
    (_raw({"__metadata__": {"step": 0}}), MalformedBody, "map names to strings"),
    (_raw({"x": {"dtype": "F32", "shape": [1]}}, bytes(4)), MalformedBody, "exactly dtype, shape and data_offsets"),
    (_raw({"x": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}, bytes(4)), InvalidGradients,
     "unknown dtype 'Q7'"),
    (_raw({"x": {"dtype": "BOOL", "shape": [4], "data_offsets": [0, 4]}}, bytes(4)), InvalidGradients,
     "non-float dtype 'BOOL'"),
    (_raw({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4)), MalformedBody, "invalid shape"),
    (_raw({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, bytes(4)), MalformedBody,
     "invalid data_offsets"),
    (_raw({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)), MalformedBody,
     "hole of 4 bytes"),
    (_raw({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(8)), MalformedBody,
     "4 bytes after its last tensor"),
    (_raw({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(4), n=2**63), MalformedBody, "cap"),
    (b"\x01\x02", MalformedBody, "shorter than its 8-byte"),
])
def test_a_bad_safetensors_header_is_refused_naming_the_problem(body, error, match):
    with pytest.raises(error, match=match):
        wire.read_safetensors(bytearray(body))


def test_float32_gradients_in_session_order_are_one_view_of_the_body():
    shapes = {"fc.weight": (4, 3), "fc.bias": (4,)}
    grads = {name: torch.randn(shape) for name, shape in shapes.items()}
    body = bytearray(wire.encode(StepMessage(0, grads), WireFormat.SAFETENSORS, field="grads"))
    message = wire.decode(body, WireFormat.SAFETENSORS)
    assert message.order == ("fc.weight", "fc.bias")   # laid out in the message's order, not by name
    flat = flatten_grads(shapes, message)
    assert flat.data_ptr() == message.tensors["fc.weight"].data_ptr()   # the body itself: no copy
    assert torch.equal(flat, torch.cat([g.reshape(-1) for g in grads.values()]))
    # Another order, or another dtype, is gathered into a new vector with the same values.
    reordered = {"fc.bias": (4,), "fc.weight": (4, 3)}
    assert torch.equal(flatten_grads(reordered, message),
                       torch.cat([grads["fc.bias"], grads["fc.weight"].reshape(-1)]))
    wide = wire.decode(bytearray(wire.encode(StepMessage(0, {k: v.double() for k, v in grads.items()}),
                                             WireFormat.SAFETENSORS)), WireFormat.SAFETENSORS)
    assert wide.packed is None and torch.equal(flatten_grads(shapes, wide), flat)


def test_an_answer_written_in_place_is_the_encoded_answer():
    shapes = {"b": (2, 3), "a": (5,), "empty": (0, 4)}
    answer = wire.SafetensorsAnswer(shapes, 7)
    values = torch.randn(11)
    answer.values.copy_(values)
    parts = dict(zip(shapes, values.split([6, 5, 0]), strict=True))
    expected = wire.encode(StepMessage(7, {n: p.view(shapes[n]) for n, p in parts.items()}), WireFormat.SAFETENSORS)
    assert bytes(answer.body) == expected
    decoded = wire.decode(answer.body, WireFormat.SAFETENSORS, field="updates")
    assert decoded.step == 7 and torch.equal(decoded.tensors["b"], parts["b"].view(2, 3))


@pytest.mark.parametrize("shapes", [
    {"w": (3,)},
    {"Z": (2,), "_x": (1,), "a\"b": (2, 1), "é": (1,)},   # names sorting before and after the metadata, escaped
    {f"p{i}": (1,) for i in range(wire.TEMPLATE_PARAMETERS + 1)},   # too many to keep: made afresh
])
@pytest.mark.parametrize("step", [0, 9, 10, 12345678901])   # each length of step number pads differently
def test_the_cached_answer_header_is_the_encoded_one_for_any_step(shapes, step):
    n = sum(torch.Size(s).numel() for s in shapes.values())
    answer = wire.SafetensorsAnswer(shapes, step)
    values = torch.arange(n, dtype=torch.float32)
    answer.values.copy_(values)
    parts = dict(zip(shapes, values.split([torch.Size(s).numel() for s in shapes.values()]), strict=True))
    expected = wire.encode(StepMessage(step, {k: p.view(shapes[k]) for k, p in parts.items()}),
                           WireFormat.SAFETENSORS)
    assert bytes(answer.body) == expected


def test_a_decoded_body_builds_only_the_tensors_asked_for():
    grads = {"b": torch.randn(2, 3), "a": torch.randn(4)}
    body = bytearray(wire.encode(StepMessage(0, grads), WireFormat.SAFETENSORS, field="grads"))
    message = wire.decode(body, WireFormat.SAFETENSORS)
    assert dict(message.specs) == {"b": (torch.float32, (2, 3)), "a": (torch.float32, (4,))}
    assert list(message.tensors) == ["b", "a"] and len(message.tensors) == 2
    assert message.tensors._built == {}   # checks and the packed view need no per-tensor views
    flatten_grads({"b": (2, 3), "a": (4,)}, message)
    assert message.tensors._built == {}
    assert torch.equal(message.tensors["a"], grads["a"]) and message.tensors["a"] is message.tensors["a"]
    with pytest.raises(KeyError):
        message.tensors["missing"]
