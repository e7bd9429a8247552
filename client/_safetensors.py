"""The one safetensors codec, shared by the SDK (numpy) and the server (torch views over the same layout).

    dumps({"fc.weight": array, ...}, {"step": "3"}) -> bytes      deterministic: equal input, equal bytes
    encode(...) -> [header, view, ...]                             dumps' bytes as pieces, not joined
    loads(body) -> (metadata, {"fc.weight": array, ...})           arrays are views of `body`, not copies
    read(body) -> Layout                                           the header, checked against the body

A file is an 8-byte little-endian header length, a JSON header (name -> dtype, shape, data_offsets, plus
an optional "__metadata__" of strings), then the tensors' little-endian bytes, with no holes.

The `safetensors` package reads checkpoints (service.lopt.checkpoint) and is what tests/client/
test_safetensors.py holds this module to. Two things it cannot do are done here: its writer puts the
metadata in hash-map order (6 different bodies in 20 saves of one dict with safetensors 0.8), which
would change a checkpoint's digest and a replayed step's bytes; and its reader copies every tensor
where a step reads its gradients as views of the request body. Bodies come from the network, so
`read` checks everything before any tensor is built, and names what is wrong.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Each dtype code's size in bytes.
ITEMSIZE: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "BOOL": 1,
    "U8": 1, "I8": 1, "U16": 2, "I16": 2, "U32": 4, "I32": 4, "U64": 8, "I64": 8,
}
FLOAT_CODES = frozenset({"F16", "BF16", "F32", "F64"})
NUMPY: dict[str, np.dtype] = {
    "F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8"),
    "I8": np.dtype("i1"), "U8": np.dtype("u1"), "I16": np.dtype("<i2"), "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"), "BOOL": np.dtype("?"),
    "BF16": np.dtype("<u2"),   # read as bits, then widened to float32 by `loads`
}
CODE_OF: dict[tuple[str, int], str] = {(d.kind, d.itemsize): code for code, d in NUMPY.items() if code != "BF16"}
# A header is a few hundred bytes per tensor; 8 MiB is ~80k tensors, far beyond any model, and keeps a
# hostile length field from making us parse megabytes of JSON.
MAX_HEADER_BYTES = 8 * 1024 * 1024
MAX_DIMS = 16
METADATA_KEY = "__metadata__"   # the one header key that is not a tensor

Body = bytes | bytearray | memoryview
Entry = tuple[str, Sequence[int], Any]   # (dtype code, shape, the data as a C-contiguous buffer)


class SafetensorsError(ValueError):
    """Bytes that are not a well-formed safetensors file (the message names what is wrong)."""


class DtypeRefused(SafetensorsError):
    """A well-formed tensor of a dtype the reader was told not to accept."""

    def __init__(self, message: str, name: str, code: Any) -> None:
        super().__init__(message)
        self.name, self.code = name, code


# --- writing ----------------------------------------------------------------------------------------------

def header(specs: Mapping[str, tuple[str, Sequence[int]]], metadata: Mapping[str, str] | None) -> bytes:
    """The length field and the JSON header for tensors laid out in `specs`' order, keys sorted, padded with
    spaces so that the data starts 8-byte aligned (as the package's own writer does)."""
    doc: dict[str, Any] = {METADATA_KEY: dict(metadata)} if metadata else {}
    offset = 0
    for name, (code, shape) in specs.items():
        size = math.prod(shape) * ITEMSIZE[code]
        doc[name] = {"dtype": code, "shape": [int(d) for d in shape], "data_offsets": [offset, offset + size]}
        offset += size
    head = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head


def write(entries: Mapping[str, Entry], metadata: Mapping[str, str] | None = None, *,
          aligned: bool = False) -> bytes:
    """Tensors' data in the order given, or `aligned`: widest dtype first, then by name (the package's
    layout, which keeps every tensor aligned to its own size). Each buffer is copied once, into place."""
    return b"".join(pieces(entries, metadata, aligned=aligned))


def pieces(entries: Mapping[str, Entry], metadata: Mapping[str, str] | None = None, *,
           aligned: bool = False) -> list[bytes | memoryview]:
    """What `write` joins: the header, then a view of each tensor's data, to be sent without a copy."""
    order = sorted(entries, key=lambda n: (-ITEMSIZE[entries[n][0]], n)) if aligned else list(entries)
    head = header({name: entries[name][:2] for name in order}, metadata)
    return [head, *(memoryview(entries[name][2]).cast("B") for name in order)]


def dumps(arrays: Mapping[str, Any], metadata: Mapping[str, str] | None = None, *,
          bfloat16: Iterable[str] = ()) -> bytes:
    """numpy arrays (or anything np.asarray takes), in the order given. `bfloat16` names arrays to store as
    BF16 (numpy has no such dtype): their values are rounded."""
    return b"".join(encode(arrays, metadata, bfloat16=bfloat16))


def encode(arrays: Mapping[str, Any], metadata: Mapping[str, str] | None = None, *,
           bfloat16: Iterable[str] = ()) -> list[bytes | memoryview]:
    """`dumps` as its pieces (views of the arrays' data where they are little-endian and contiguous)."""
    as_bf16 = set(bfloat16)
    entries: dict[str, Entry] = {}
    for name, value in arrays.items():
        a = _little_endian(bfloat16_bits(value) if name in as_bf16 else np.asarray(value))
        code = "BF16" if name in as_bf16 else CODE_OF.get((a.dtype.kind, a.dtype.itemsize))
        if code is None:
            raise TypeError(f"cannot send {name!r} of dtype {a.dtype}: use float16, float32 or float64")
        entries[name] = (code, a.shape, a.reshape(-1).view(np.uint8))
    return pieces(entries, metadata)


def bfloat16_bits(a: np.ndarray) -> np.ndarray:
    """float32 values as bfloat16 bit patterns (uint16), rounded to nearest even, as torch rounds."""
    u = np.ascontiguousarray(a, dtype="<f4").view("<u4").astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")


def _little_endian(a: np.ndarray) -> np.ndarray:
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return a if a.flags.c_contiguous else a.copy(order="C")  # (np.ascontiguousarray would make a 0-d array 1-d)


# --- reading ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """A checked body: its metadata, and its tensors' (name, dtype code, shape, begin, end) in the order
    their data lies; offsets count from `data_start`."""

    view: memoryview
    meta: dict[str, str]
    entries: list[tuple[str, str, tuple[int, ...], int, int]]
    data_start: int

    @property
    def codes(self) -> dict[str, str]:
        return {e[0]: e[1] for e in self.entries}


def read(body: Body, *, max_header: int = MAX_HEADER_BYTES, accept: Iterable[str] | None = None) -> Layout:
    """Check a body's header against the body. Refuses, naming the problem: a header length beyond the body
    or over `max_header`, a header that is not a JSON object, duplicate names, metadata that is not strings,
    a dtype outside `accept` (DtypeRefused; None accepts every dtype the format has), a shape whose size
    does not match its byte range, offsets out of range, overlapping, or leaving holes."""
    view = memoryview(body).cast("B")
    if len(view) < 8:
        raise SafetensorsError(f"safetensors body is {len(view)} bytes, shorter than its 8-byte header length")
    n = int.from_bytes(view[:8], "little")
    if n > max_header:
        raise SafetensorsError(f"safetensors header claims {n} bytes, over the {max_header}-byte cap")
    if 8 + n > len(view):
        raise SafetensorsError(f"safetensors header claims {n} bytes, which exceeds the body: only {len(view) - 8} "
                               "follow the length field (truncated body?)")
    raw = bytes(view[8:8 + n])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SafetensorsError(f"safetensors header is not JSON: not even UTF-8 text ({exc})") from exc
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:
        raise SafetensorsError(f"safetensors header is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise SafetensorsError("safetensors header is not a JSON object")
    meta = doc.pop(METADATA_KEY, None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise SafetensorsError("safetensors __metadata__ must map names to strings")

    accepted = tuple(ITEMSIZE if accept is None else accept)
    data_len = len(view) - 8 - n
    entries = sorted(((name, *_entry(name, spec, data_len, accepted)) for name, spec in doc.items()),
                     key=lambda e: (e[3], e[4]))
    cursor, prev = 0, None
    for name, _code, _shape, begin, end in entries:
        if begin < cursor:
            raise SafetensorsError(f"safetensors tensor {name!r} overlaps tensor {prev!r}")
        if begin > cursor:
            raise SafetensorsError(f"safetensors data has a hole of {begin - cursor} bytes before tensor {name!r}")
        cursor, prev = end, name
    if cursor != data_len:
        raise SafetensorsError(f"safetensors body has {data_len - cursor} bytes after its last tensor")
    return Layout(view, meta, entries, 8 + n)


def _entry(name: str, spec: Any, data_len: int, accepted: tuple[str, ...]) -> tuple[str, tuple[int, ...], int, int]:
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise SafetensorsError(f"safetensors entry {name!r} must have exactly dtype, shape and data_offsets")
    code, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if not isinstance(code, str) or code not in accepted:
        kind = ("the dtype" if code in FLOAT_CODES else "a non-float dtype" if code in ITEMSIZE
                else "an unknown dtype")
        raise DtypeRefused(f"tensor {name!r} has {kind} {code!r}; accepted: {', '.join(accepted)}", name, code)
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(type(d) is int and d >= 0 for d in shape)):
        raise SafetensorsError(f"safetensors entry {name!r} has an invalid shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(o) is int for o in offsets) or not 0 <= offsets[0] <= offsets[1]):
        raise SafetensorsError(f"safetensors entry {name!r} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    if end > data_len:
        raise SafetensorsError(f"safetensors tensor {name!r} ends at byte {end}, past the {data_len}-byte data")
    expected = math.prod(shape) * ITEMSIZE[code]
    if end - begin != expected:
        raise SafetensorsError(f"safetensors tensor {name!r} of shape {shape} and dtype {code} needs "
                               f"{expected} bytes, its offsets span {end - begin}")
    return code, tuple(shape), begin, end


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate name {key!r}")
        out[key] = value
    return out


def loads(body: Body) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """Metadata and numpy arrays, views of `body` (read-only ones for bytes). BF16 is widened to float32,
    exactly: a bfloat16 is the top half of a float32."""
    layout = read(body, max_header=len(body), accept=NUMPY)
    data = layout.view[layout.data_start:]
    arrays: dict[str, np.ndarray] = {}
    for name, code, shape, begin, end in layout.entries:
        dtype = NUMPY[code]
        a = (np.frombuffer(data, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=begin).reshape(shape)
             if end > begin else np.empty(shape, dtype=dtype))
        arrays[name] = (a.astype("<u4") << 16).view("<f4") if code == "BF16" else a
    return layout.meta, arrays
