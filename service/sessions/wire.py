"""The step's two wire formats: JSON for curl and small models, safetensors for real ones.

    JSON         request  {"step": 0, "grads": {"fc1.bias": [...], ...}}   (nested lists shaped like the parameter)
                 response {"step": 1, "updates": {"fc1.bias": [...], ...}}
    safetensors  request  one tensor per parameter, metadata {"step": "0"}
                 response one float32 tensor per parameter, metadata {"step": "1"}

The response's `step` is the session's count after the step: the number to send next. Safetensors
requests may say `application/vnd.l2o.safetensors` (the documented type, used for every safetensors
response) or `application/octet-stream`.

Safetensors bodies come from the network: the shared codec (client/_safetensors.py) checks their header
before any tensor is built from it; the tensors are then views of the body itself (no copy) when the body
is a writable buffer.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch

from client import _safetensors as st
from service.errors import InvalidGradients, MalformedBody, UnsupportedMediaType, ValidationError
from service.lopt.checkpoint import serialize_safetensors, torch_entries

JSON_TYPE = "application/json"
SAFETENSORS_TYPE = "application/vnd.l2o.safetensors"
OCTET_TYPE = "application/octet-stream"

MAX_HEADER_BYTES = st.MAX_HEADER_BYTES
MAX_DIMS = st.MAX_DIMS
# A step count is a signed 64-bit integer wherever it is stored (Redis, safetensors metadata, the SDK):
# a larger number names no step, and is refused before anything compares or converts it.
MAX_STEP = 2**63 - 1
# The digits of MAX_STEP: a longer number is refused before int() reads it (Python refuses to convert
# more than 4,300 digits at all, with a ValueError that no caller expects).
MAX_INT_DIGITS = len(str(MAX_STEP))
MAX_JSON_INT_CHARS = 4000
METADATA_KEY = st.METADATA_KEY

FLOAT_DTYPES: dict[str, torch.dtype] = {
    "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
}
# One deterministic writer serves checkpoints, steps and session states.
write_safetensors = serialize_safetensors


# The most bytes one gradient value takes in a JSON body: a float's longest repr (24 characters), its
# separator, and room for a pretty-printer's line break and indentation.
JSON_BYTES_PER_VALUE = 64


def max_body_bytes(shapes: Mapping[str, tuple[int, ...]], fmt: WireFormat) -> int:
    """The largest step body that gradients of these shapes can make in `fmt`: a longer body cannot be
    a valid step for them, so it is refused before it is read."""
    n = sum(math.prod(shape) for shape in shapes.values())
    # A name is at most 6 bytes of JSON per byte (\uXXXX escapes), plus its tensor's fields and digits.
    names = sum(6 * len(name.encode("utf-8", "surrogatepass")) + 128 + 24 * len(shape)
                for name, shape in shapes.items())
    if fmt is WireFormat.JSON:
        lists = sum(math.prod(shape[:-1]) * 8 for shape in shapes.values() if shape)   # brackets, breaks
        return 1024 + names + lists + JSON_BYTES_PER_VALUE * n
    return 1024 + names + 8 * n   # float64 at most


class WireFormat(StrEnum):
    JSON = "json"
    SAFETENSORS = "safetensors"

    @property
    def content_type(self) -> str:
        return JSON_TYPE if self is WireFormat.JSON else SAFETENSORS_TYPE


def format_of(content_type: str | None) -> WireFormat:
    """The wire format a request's Content-Type names (parameters such as charset are ignored)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == JSON_TYPE:
        return WireFormat.JSON
    if media in (SAFETENSORS_TYPE, OCTET_TYPE):
        return WireFormat.SAFETENSORS
    raise UnsupportedMediaType(
        f"Content-Type {media or '(none)'!r} is not accepted: send {JSON_TYPE} or {SAFETENSORS_TYPE}",
        detail={"accepted": [JSON_TYPE, SAFETENSORS_TYPE, OCTET_TYPE]})


@dataclass(frozen=True)
class StepMessage:
    """A decoded step request (grads) or answer (updates): tensors by parameter name plus a step number."""

    step: int
    tensors: Mapping[str, torch.Tensor]
    # A decoded safetensors body whose tensors are all float32 and aligned: all of them as one vector (a
    # view of the body), with their names in the order they lie there.
    packed: torch.Tensor | None = None
    order: tuple[str, ...] = ()

    @property
    def specs(self) -> Mapping[str, tuple[torch.dtype, tuple[int, ...]]]:
        """Each tensor's dtype and shape by name, read from a decoded body's header without building
        the tensor."""
        if isinstance(self.tensors, _BodyTensors):
            return self.tensors.specs
        return {name: (t.dtype, tuple(t.shape)) for name, t in self.tensors.items()}


Body = bytes | bytearray | memoryview


def decode(body: Body, fmt: WireFormat, *, field: str = "grads") -> StepMessage:
    if fmt is WireFormat.JSON:
        return _decode_json(body, field)
    layout = _parse_safetensors(body)
    step = parse_step(layout.meta.get("step"), "the safetensors metadata")
    packed = layout.packed_float32()
    order = tuple(e[0] for e in layout.entries) if packed is not None else ()
    return StepMessage(step, _BodyTensors(layout), packed, order)


def encode(message: StepMessage, fmt: WireFormat, *, field: str = "updates") -> bytes:
    """Deterministic bytes: the same message always encodes to the same body. Safetensors data lies in
    the message's order (a session's parameter order), as SafetensorsAnswer writes it."""
    if fmt is WireFormat.JSON:
        doc = {"step": message.step, field: {k: v.tolist() for k, v in message.tensors.items()}}
        # float32 values print as the shortest float64 repr, which reads back to the same float32.
        return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    return st.write(torch_entries(message.tensors), {"step": str(message.step)})


class SafetensorsAnswer:
    """A binary step answer allocated before the step: `body` is the whole answer, header written, and
    `values` a float32 view of its data (every parameter's updates back to back, in the session's
    order), for the step to write its updates straight into. No encoding pass, no copy."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], step: int) -> None:
        # Most models have a few dozen parameters: their templates are kept. A header of many thousands
        # is made afresh, so the cache stays small (at most TEMPLATES x TEMPLATE_PARAMETERS names).
        items = tuple(shapes.items())
        before, after, n = (_answer_template(items) if len(items) <= TEMPLATE_PARAMETERS
                            else _answer_template.__wrapped__(items))
        head = before + str(step).encode() + after
        head += b" " * (-len(head) % 8)
        self.body = bytearray(8 + len(head) + 4 * n)
        self.body[:8] = len(head).to_bytes(8, "little")
        self.body[8:8 + len(head)] = head
        self.values = (torch.frombuffer(self.body, dtype=torch.float32, offset=8 + len(head), count=n) if n
                       else torch.empty(0))


_STEP_FIELD = b'"__metadata__":{"step":"0"}'
TEMPLATES, TEMPLATE_PARAMETERS = 128, 256


@functools.lru_cache(maxsize=TEMPLATES)
def _answer_template(shapes: tuple[tuple[str, tuple[int, ...]], ...]) -> tuple[bytes, bytes, int]:
    """A float32 answer header for these shapes, split around its step number (a session answers
    with the same header every step but for that number), and the number of values.

    The split point is unambiguous: a parameter name's quotes are escaped in JSON, so the unescaped
    metadata field appears once."""
    head = st.header({name: ("F32", shape) for name, shape in shapes}, {"step": "0"})[8:].rstrip(b" ")
    zero = head.index(_STEP_FIELD) + len(_STEP_FIELD) - 3
    return head[:zero], head[zero + 1:], sum(math.prod(shape) for _, shape in shapes)


# --- JSON -----------------------------------------------------------------------------------------------

def _decode_json(body: Body, field: str) -> StepMessage:
    try:
        doc = json.loads(bytes(body), parse_constant=_reject_constant, parse_int=_bounded_int)
    except (ValueError, RecursionError) as exc:
        raise MalformedBody(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise MalformedBody(f'the JSON body must be an object {{"step": ..., "{field}": {{...}}}}')
    unknown = sorted(set(doc) - {"step", field})
    if unknown:
        raise MalformedBody(f"unknown fields in the JSON body: {', '.join(unknown)}")
    if field not in doc:
        raise MalformedBody(f'the JSON body has no "{field}" object')
    values = doc[field]
    if not isinstance(values, dict):
        raise MalformedBody(f'"{field}" must be an object mapping parameter names to nested lists')
    step = parse_step(doc.get("step"), "the JSON body")
    return StepMessage(step, {name: _json_tensor(name, value) for name, value in values.items()})


def _bounded_int(text: str) -> int:
    # Past Python's own limit (sys.get_int_max_str_digits) int() raises a ValueError of its own; a
    # gradient of a few hundred digits is still read, to be refused as out of float32's range.
    if len(text) > MAX_JSON_INT_CHARS:
        raise ValidationError(f"the JSON body holds an integer of {len(text)} digits: integers here are 64-bit "
                              f"at most (|n| <= {MAX_STEP})", detail={"max": MAX_STEP})
    return int(text)


def _reject_constant(name: str) -> Any:
    raise InvalidGradients(f"the JSON body contains {name}: every value must be a finite number")


def _json_tensor(name: str, value: Any) -> torch.Tensor:
    shape: list[int] = []
    probe = value
    while isinstance(probe, list):
        shape.append(len(probe))
        if len(shape) > MAX_DIMS:
            raise InvalidGradients(f"{name!r} nests deeper than {MAX_DIMS} dimensions")
        probe = probe[0] if probe else None
    flat: list[float] = []
    _flatten(value, shape, 0, flat, name)
    try:
        return torch.tensor(flat, dtype=torch.float32).reshape(shape)
    except (OverflowError, RuntimeError, ValueError) as exc:
        raise InvalidGradients(f"{name!r} holds a number out of range: {exc}") from exc


def _flatten(value: Any, shape: list[int], depth: int, out: list[float], where: str) -> None:
    if depth == len(shape):
        if type(value) not in (int, float):  # bool is an int subclass, and not a gradient
            raise InvalidGradients(f"{where} is {_json_kind(value)}, expected a number")
        out.append(value)
        return
    if not isinstance(value, list) or len(value) != shape[depth]:
        got = f"a list of {len(value)}" if isinstance(value, list) else _json_kind(value)
        raise InvalidGradients(f"{where} is {got}, expected a list of {shape[depth]} (ragged nesting)")
    if depth == len(shape) - 1:
        if all(type(x) is float or type(x) is int for x in value):
            out.extend(value)
            return
    for i, item in enumerate(value):
        _flatten(item, shape, depth + 1, out, f"{where}[{i}]")


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return "a number"


def parse_step(value: Any, where: str) -> int:
    if value is None:
        raise MalformedBody(f'{where} has no "step" (the number of steps the session has applied)')
    if isinstance(value, str):
        if not (value.isascii() and value.isdecimal()):
            raise MalformedBody(f'"step" in {where} must be a non-negative integer, got {value[:40]!r}')
        if len(value) > MAX_INT_DIGITS:
            raise _step_too_large(where)
        value = int(value)
    if type(value) is not int or value < 0:
        raise MalformedBody(f'"step" in {where} must be a non-negative integer, got {str(value)[:40]!r}')
    if value > MAX_STEP:
        raise _step_too_large(where)
    return value


def _step_too_large(where: str) -> ValidationError:
    return ValidationError(f'"step" in {where} is over {MAX_STEP}, the largest step number (64-bit)',
                           detail={"max": MAX_STEP})


# --- safetensors ----------------------------------------------------------------------------------------

def read_safetensors(body: Body, *, max_header: int = MAX_HEADER_BYTES,
                     dtypes: dict[str, torch.dtype] = FLOAT_DTYPES) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Check a safetensors body's header against the body (st.read says what is refused), then view its
    tensors in place."""
    layout = _parse_safetensors(body, max_header=max_header, dtypes=dtypes)
    return layout.meta, layout.tensors()


@dataclass(frozen=True)
class _Layout:
    """A checked safetensors body: its metadata and its tensors' (name, dtype, shape, begin, end) by offset."""

    view: memoryview
    meta: dict[str, str]
    entries: list[tuple[str, torch.dtype, tuple[int, ...], int, int]]
    data_start: int

    @functools.cached_property
    def base(self) -> torch.Tensor | None:
        """The body as uint8, when tensors may view it (a writable buffer)."""
        return torch.frombuffer(self.view, dtype=torch.uint8) if not self.view.readonly and len(self.view) else None

    def tensor(self, dtype: torch.dtype, shape: tuple[int, ...], begin: int, end: int) -> torch.Tensor:
        return _tensor(self.view, self.base, dtype, shape, self.data_start + begin, self.data_start + end)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: self.tensor(dtype, shape, begin, end) for name, dtype, shape, begin, end in self.entries}

    def packed_float32(self) -> torch.Tensor | None:
        """Every tensor's data as one float32 vector, a view of the body, when all are float32 and the
        data is 4-byte aligned in memory; else None."""
        size = len(self.view) - self.data_start
        if self.view.readonly or not size or any(e[1] != torch.float32 for e in self.entries):
            return None
        packed = torch.frombuffer(self.view, dtype=torch.float32, offset=self.data_start, count=size // 4)
        return packed if packed.data_ptr() % 4 == 0 else None


class _BodyTensors(Mapping[str, torch.Tensor]):
    """A decoded body's tensors by name, in the order their data lies, each viewed out of the body when
    first asked for: a step that takes its gradients as one packed vector builds none of them."""

    def __init__(self, layout: _Layout) -> None:
        self._layout = layout
        self._entries = {e[0]: e[1:] for e in layout.entries}
        self.specs = {name: (dtype, shape) for name, (dtype, shape, _, _) in self._entries.items()}
        self._built: dict[str, torch.Tensor] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        built = self._built.get(name)
        if built is None:
            built = self._built[name] = self._layout.tensor(*self._entries[name])
        return built

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def _parse_safetensors(body: Body, *, max_header: int = MAX_HEADER_BYTES,
                       dtypes: dict[str, torch.dtype] = FLOAT_DTYPES) -> _Layout:
    try:
        layout = st.read(body, max_header=max_header, accept=dtypes)
    except st.DtypeRefused as exc:
        raise InvalidGradients(str(exc), detail={"name": exc.name, "dtype": exc.code}) from exc
    except st.SafetensorsError as exc:
        raise MalformedBody(str(exc)) from exc
    entries = [(name, dtypes[code], shape, begin, end) for name, code, shape, begin, end in layout.entries]
    return _Layout(layout.view, layout.meta, entries, layout.data_start)


def _tensor(view: memoryview, base: torch.Tensor | None, dtype: torch.dtype, shape: tuple[int, ...],
            start: int, stop: int) -> torch.Tensor:
    if start == stop:
        return torch.empty(shape, dtype=dtype)
    if base is not None and base.data_ptr() % dtype.itemsize == 0 and start % dtype.itemsize == 0:
        # A view of the request body: no copy. Safetensors data is little-endian, as is every host torch
        # ships wheels for.
        return base[start:stop].view(dtype).view(shape)
    # A read-only or misaligned buffer: one copy into memory torch may own.
    return torch.frombuffer(bytearray(view[start:stop]), dtype=dtype).view(shape)

