"""The checkpoint for *using* an optimizer: weights in safetensors plus a JSON config.

On disk a checkpoint is a folder with `weights.safetensors` and `config.json`.
The config also rides in the safetensors metadata, so the single file is
self-describing and its sha256 (the digest) pins weights and config together.
The checkpoint for *resuming meta-training* lives in `service.metatrain.resume`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from client import _safetensors as st
from service.lopt.config import ConfigError, OptimizerConfig
from service.lopt.network import weight_shapes
from service.lopt.tensors import all_finite

FORMAT = "l2o-lstm/1"
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded or does not match its config."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    config: OptimizerConfig
    weights: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        check_weights(self.config, self.weights)

    def to_bytes(self) -> bytes:
        meta = {"format": FORMAT, "config": json.dumps(self.config.to_dict(), sort_keys=True)}
        tensors = {k: v.detach().to(torch.float32) for k, v in self.weights.items()}
        return serialize_safetensors(tensors, meta)

    @property
    def digest(self) -> str:
        return sha256_hex(self.to_bytes())

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        data = self.to_bytes()
        (directory / WEIGHTS_FILE).write_bytes(data)
        doc = {"format": FORMAT, "sha256": sha256_hex(data), "config": self.config.to_dict()}
        (directory / CONFIG_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Checkpoint:
        directory = Path(directory)
        if directory.is_file():
            return cls.from_bytes(directory.read_bytes())
        try:
            data = (directory / WEIGHTS_FILE).read_bytes()
        except OSError as exc:
            raise CheckpointError(f"cannot read {directory / WEIGHTS_FILE}: {exc}") from exc
        expected = None
        config_path = directory / CONFIG_FILE
        if config_path.exists():
            try:
                doc = json.loads(config_path.read_text())
            except ValueError as exc:
                raise CheckpointError(f"{config_path} is not valid JSON: {exc}") from exc
            expected = doc.get("sha256") if isinstance(doc, dict) else None
        return cls.from_bytes(data, expected_sha256=expected)

    @classmethod
    def from_bytes(cls, data: bytes, *, config: dict[str, Any] | None = None,
                   expected_sha256: str | None = None) -> Checkpoint:
        """Parse and validate checkpoint bytes; `config`, when given, must match the embedded one."""
        if expected_sha256 is not None and sha256_hex(data) != expected_sha256.lower():
            raise CheckpointError(
                f"digest mismatch: expected sha256 {expected_sha256}, got {sha256_hex(data)}")
        meta = read_metadata(data)
        embedded = meta.get("config")
        if embedded is None and config is None:
            raise CheckpointError("checkpoint has no config: none in its metadata and none given")
        try:
            cfg_dict = json.loads(embedded) if embedded is not None else config
        except (ValueError, RecursionError) as exc:
            raise CheckpointError(f"embedded config is not valid JSON: {exc}") from exc
        try:
            cfg = OptimizerConfig.from_dict(cfg_dict)
            if config is not None and embedded is not None and OptimizerConfig.from_dict(config) != cfg:
                raise CheckpointError("the config given does not match the config inside the checkpoint")
        except ConfigError as exc:
            raise CheckpointError(f"invalid config: {exc}") from exc
        try:
            weights = st_load(data)
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"not a valid safetensors file: {exc}") from exc
        return cls(cfg, weights)


ST_DTYPE_OF: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.int32: "I32",
    torch.int64: "I64",
}


def torch_entries(tensors: Mapping[str, torch.Tensor]) -> dict[str, st.Entry]:
    """Tensors as the shared codec writes them: dtype code, shape, and their bytes (a view where the tensor
    is already contiguous on the CPU)."""
    entries = {}
    for name, t in tensors.items():
        if t.dtype not in ST_DTYPE_OF:
            raise ValueError(f"cannot write tensor {name!r} of dtype {t.dtype} as safetensors")
        flat = t.detach().contiguous().cpu().reshape(-1)
        entries[name] = (ST_DTYPE_OF[t.dtype], tuple(t.shape), flat.view(torch.uint8).numpy())
    return entries


def serialize_safetensors(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """Safetensors bytes that depend only on the input, so equal content gives an equal digest: the header's
    keys sorted, the data laid out by alignment, then name."""
    return st.write(torch_entries(tensors), metadata, aligned=True)


def read_metadata(data: bytes) -> dict[str, str]:
    """The safetensors header's metadata, once the header is checked against the body."""
    try:
        return st.read(data).meta
    except st.SafetensorsError as exc:
        raise CheckpointError(f"not a valid safetensors file: {exc}") from exc


def check_weights(config: OptimizerConfig, weights: dict[str, torch.Tensor]) -> None:
    """The weights must have exactly the names and shapes the config implies, all finite floats."""
    expected = weight_shapes(config)
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"weights do not match the config's architecture: missing {missing or 'none'}, "
            f"unexpected {extra or 'none'}")
    for name, shape in expected.items():
        w = weights[name]
        if tuple(w.shape) != shape:
            raise CheckpointError(f"weight {name} has shape {tuple(w.shape)}, config implies {shape}")
        if not w.dtype.is_floating_point:
            raise CheckpointError(f"weight {name} has dtype {w.dtype}, expected a float dtype")
        if not all_finite(w):
            raise CheckpointError(f"weight {name} has NaN or infinite values")
