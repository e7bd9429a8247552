"""The safetensors format in numpy, so the SDK's binary steps need neither torch nor the safetensors package.

    dumps({"fc.weight": array, ...}, {"step": "3"}) -> bytes     one copy of the data, straight into the body
    loads(body) -> (metadata, {"fc.weight": array, ...})          arrays are views of `body`, not copies

A file is an 8-byte little-endian header length, a JSON header (name -> dtype, shape, data_offsets, plus
an optional "__metadata__" of strings), then the tensors' little-endian bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

DTYPES: dict[str, np.dtype] = {
    "F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8"),
    "I8": np.dtype("i1"), "U8": np.dtype("u1"), "I16": np.dtype("<i2"), "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"), "BOOL": np.dtype("?"),
    "BF16": np.dtype("<u2"),   # read as bits, then widened to float32 by `loads`
}
CODE_OF: dict[tuple[str, int], str] = {(d.kind, d.itemsize): code for code, d in DTYPES.items() if code != "BF16"}
MAX_HEADER_BYTES = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """Bytes that are not a well-formed safetensors file."""


def dumps(tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None, *,
          bfloat16: Iterable[str] = ()) -> bytes:
    """`bfloat16` names tensors to store as BF16 (numpy has no such dtype): their values are rounded."""
    as_bf16 = set(bfloat16)
    arrays = {name: _little_endian(bfloat16_bits(value) if name in as_bf16 else np.asarray(value))
              for name, value in tensors.items()}
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, a in arrays.items():
        code = "BF16" if name in as_bf16 else CODE_OF.get((a.dtype.kind, a.dtype.itemsize))
        if code is None:
            raise TypeError(f"cannot send {name!r} of dtype {a.dtype}: use float16, float32 or float64")
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors' own writer does
    # bytes.join copies each array's memory once, straight into the result.
    return b"".join([len(raw).to_bytes(8, "little"), raw, *(a.reshape(-1).view(np.uint8) for a in arrays.values())])


def loads(body: bytes | bytearray | memoryview) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    view = memoryview(body).cast("B")
    if len(view) < 8:
        raise SafetensorsError(f"{len(view)} bytes is shorter than the 8-byte header length")
    n = int.from_bytes(view[:8], "little")
    if n > min(MAX_HEADER_BYTES, len(view) - 8):
        raise SafetensorsError(f"the header claims {n} bytes; the body has {len(view) - 8} after the length")
    try:
        header = json.loads(bytes(view[8:8 + n]))
    except ValueError as exc:
        raise SafetensorsError(f"the header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise SafetensorsError("the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data = view[8 + n:]
    arrays: dict[str, np.ndarray] = {}
    for name, spec in header.items():
        try:
            dtype = DTYPES[spec["dtype"]]
            shape = tuple(int(d) for d in spec["shape"])
            begin, end = (int(o) for o in spec["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SafetensorsError(f"tensor {name!r}: unreadable entry {spec!r} ({exc})") from exc
        if not (0 <= begin <= end <= len(data)) or end - begin != math.prod(shape) * dtype.itemsize:
            raise SafetensorsError(f"tensor {name!r}: offsets {begin}..{end} do not fit shape {list(shape)} "
                                   f"of {spec['dtype']} in {len(data)} bytes of data")
        count = math.prod(shape)
        arrays[name] = (np.frombuffer(data, dtype=dtype, count=count, offset=begin).reshape(shape) if count
                        else np.empty(shape, dtype=dtype))
        if spec["dtype"] == "BF16":   # widened exactly: a bfloat16 is the top half of a float32
            arrays[name] = (arrays[name].astype("<u4") << 16).view("<f4")
    return metadata, arrays


def dtype_codes(body: bytes | bytearray | memoryview) -> dict[str, str]:
    """Each tensor's dtype code as the header names it (loads widens BF16, which numpy lacks, to float32)."""
    view = memoryview(body).cast("B")
    n = int.from_bytes(view[:8], "little")
    header = json.loads(bytes(view[8:8 + n]))
    return {name: spec["dtype"] for name, spec in header.items() if name != "__metadata__"}


def bfloat16_bits(a: np.ndarray) -> np.ndarray:
    """float32 values as bfloat16 bit patterns (uint16), rounded to nearest even, as torch rounds."""
    u = np.ascontiguousarray(a, dtype="<f4").view("<u4").astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")


def _little_endian(a: np.ndarray) -> np.ndarray:
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return a if a.flags.c_contiguous else a.copy(order="C")  # (np.ascontiguousarray would make a 0-d array 1-d)
