"""The shared safetensors codec against the `safetensors` package: what one writes the other reads, the same
layout, and every body the package refuses refused here too, with a message naming the problem."""

from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from client import _safetensors as st
from service.lopt.checkpoint import serialize_safetensors
from service.sessions import wire

TENSORS = {"z": torch.randn(2, 3, dtype=torch.float64), "a": torch.randn(5).to(torch.bfloat16),
           "s": torch.tensor(1.5), "h": torch.randn(3, 1).half(), "i": torch.arange(4), "e": torch.zeros(0, 2),
           "b": torch.tensor([True, False])}


def test_what_we_write_the_package_reads_in_the_same_layout():
    meta = {"step": "3", "b": "x"}
    ours = serialize_safetensors(TENSORS, meta)
    loaded = safetensors.torch.load(ours)
    assert all(loaded[k].dtype == v.dtype and torch.equal(loaded[k], v) for k, v in TENSORS.items())
    theirs = safetensors.torch.save(TENSORS, meta)
    head = {name: int.from_bytes(body[:8], "little") for name, body in (("ours", ours), ("theirs", theirs))}
    assert ours[8 + head["ours"]:] == theirs[8 + head["theirs"]:]   # the same data, laid out alike
    assert json.loads(ours[8:8 + head["ours"]]) == json.loads(theirs[8:8 + head["theirs"]])
    # and unlike the package's, our bytes depend on the content only
    assert serialize_safetensors(dict(reversed(TENSORS.items())), dict(reversed(meta.items()))) == ours


def test_what_the_package_writes_we_read_as_views():
    arrays = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "d": np.linspace(0, 1, 5), "n": np.zeros((0, 3))}
    body = safetensors.numpy.save(arrays, {"k": "v"})
    meta, got = st.loads(body)
    assert meta == {"k": "v"} and got.keys() == arrays.keys()
    assert all(got[k].dtype == a.dtype and np.array_equal(got[k], a) for k, a in arrays.items())
    assert not got["w"].flags.owndata   # a view of the body
    _, tensors = wire.read_safetensors(bytearray(safetensors.torch.save({"w": torch.ones(3)})))
    assert torch.equal(tensors["w"], torch.ones(3))


def test_the_sdk_writer_and_the_servers_agree_byte_for_byte():
    grads = {"fc.weight": np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32),
             "fc.bias": np.ones(2, np.float32)}
    body = st.dumps(grads, {"step": "4"})
    message = wire.StepMessage(4, {k: torch.from_numpy(v) for k, v in grads.items()})
    assert body == wire.encode(message, wire.WireFormat.SAFETENSORS)
    assert np.array_equal(safetensors.numpy.load(body)["fc.weight"], grads["fc.weight"])


def raw(header: dict | bytes, data: bytes = b"", n: int | None = None) -> bytes:
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return (len(head) if n is None else n).to_bytes(8, "little") + head + data


def x(**spec) -> dict:
    return {"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], **spec}}


REFUSED_BY_BOTH = {
    "too short": (b"\x01\x02", "shorter than its 8-byte"),
    "header length beyond the body": (raw(x(), bytes(4), n=1000), "exceeds the body"),
    "header not JSON": (raw(b'{"x": [', bytes(4)), "not valid JSON"),
    "header not UTF-8": (raw(b"\xff" * 8, bytes(4)), "not JSON"),
    "header a list": (raw(b"[1, 2]"), "not a JSON object"),
    "metadata not strings": (raw({"__metadata__": {"step": 0}}), "map names to strings"),
    "no offsets": (raw({"x": {"dtype": "F32", "shape": [1]}}, bytes(4)), "exactly dtype, shape and data_offsets"),
    "unknown dtype": (raw(x(dtype="Q7"), bytes(4)), "unknown dtype 'Q7'"),
    "negative dimension": (raw(x(shape=[-1]), bytes(4)), "invalid shape"),
    "offsets reversed": (raw(x(data_offsets=[4, 0]), bytes(4)), "invalid data_offsets"),
    "a hole": (raw(x(data_offsets=[4, 8]), bytes(8)), "hole of 4 bytes"),
    "bytes after the last tensor": (raw(x(), bytes(8)), "4 bytes after its last tensor"),
    "offsets past the data": (raw(x(shape=[2], data_offsets=[0, 8]), bytes(4)), "past the 4-byte data"),
    "shape and bytes disagree": (raw(x(shape=[2]), bytes(4)), "needs 8 bytes"),
    "overlapping tensors": (raw({**x(), "y": x()["x"]}, bytes(4)), "overlaps"),
}
# Bodies the package takes that we refuse: a name given twice, an entry with fields the format lacks.
REFUSED_BY_US = {
    "duplicate names": (raw(b'{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                            b'"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', bytes(4)), "duplicate"),
    "an unknown field": (raw(x(extra=1), bytes(4)), "exactly dtype, shape and data_offsets"),
}


@pytest.mark.parametrize("what", REFUSED_BY_BOTH)
def test_every_body_the_package_refuses_is_refused_naming_the_problem(what):
    body, fragment = REFUSED_BY_BOTH[what]
    with pytest.raises(Exception, match="Error while deserializing"):
        safetensors.numpy.load(body)
    with pytest.raises(st.SafetensorsError) as refused:
        st.read(body)
    assert fragment in str(refused.value)


@pytest.mark.parametrize("what", REFUSED_BY_US)
def test_we_also_refuse_what_the_format_forbids_but_the_package_lets_through(what):
    body, fragment = REFUSED_BY_US[what]
    safetensors.numpy.load(body)
    with pytest.raises(st.SafetensorsError, match=fragment):
        st.read(body)


def test_a_dtype_outside_those_accepted_is_its_own_error():
    body = raw(x(dtype="I32"), bytes(4))
    assert st.read(body).codes == {"x": "I32"}
    with pytest.raises(st.DtypeRefused, match="non-float dtype 'I32'; accepted: F32, F16") as refused:
        st.read(body, accept=("F32", "F16"))
    assert (refused.value.name, refused.value.code) == ("x", "I32")


def test_bfloat16_rounds_as_torch_does_and_reads_back_exactly():
    values = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 10 ** torch.linspace(-30, 30, 4096)
    values[:4] = torch.tensor([0.0, -0.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8])   # ties: to even, both ways
    body = st.dumps({"hc": values.numpy()}, {"k": "v"}, bfloat16=["hc"])
    assert st.read(body).codes == {"hc": "BF16"}
    # The package (torch) sees exactly torch's own rounding of the values.
    assert torch.equal(safetensors.torch.load(body)["hc"].view(torch.int16),
                       values.to(torch.bfloat16).view(torch.int16))
    meta, arrays = st.loads(body)
    assert meta == {"k": "v"} and arrays["hc"].dtype == np.float32
    assert np.array_equal(arrays["hc"], values.to(torch.bfloat16).float().numpy())


def test_uint16_arrays_are_not_taken_for_bfloat16():
    with pytest.raises(TypeError, match="cannot send"):
        st.dumps({"x": np.zeros(3, dtype=np.uint16)})
