"""Upload validation: a checkpoint must load, match its architecture and produce finite updates."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from service.errors import DigestMismatch, InvalidCheckpoint
from service.lopt import Checkpoint, OptimizerConfig
from service.lopt.checkpoint import read_metadata, sha256_hex
from service.registry import checkpoints
from tests.conftest import checkpoint_bytes


def test_a_valid_checkpoint_is_stored_byte_for_byte():
    data = checkpoint_bytes()
    ckpt, stored = checkpoints.validate(data, expected_sha256=sha256_hex(data).upper())
    assert stored == data
    assert ckpt.config == OptimizerConfig(hidden_size=4, num_layers=1)


def test_corrupt_bytes_are_refused():
    data = checkpoint_bytes()
    for bad in (b"", b"garbage", data[:40], b"\xff" * 8 + data[8:]):
        with pytest.raises(InvalidCheckpoint, match="invalid checkpoint"):
            checkpoints.validate(bad)


def test_a_declared_digest_must_match():
    data = checkpoint_bytes()
    with pytest.raises(DigestMismatch, match="sha256") as info:
        checkpoints.validate(data, expected_sha256="0" * 64)
    assert info.value.status == 400 and info.value.detail["actual"] == sha256_hex(data)


def test_weights_that_do_not_match_the_config_are_refused():
    small = st_load(checkpoint_bytes(hidden_size=4))
    claims_bigger = json.dumps(OptimizerConfig(hidden_size=8, num_layers=1).to_dict())
    data = st_save(small, metadata={"format": "l2o-lstm/1", "config": claims_bigger})
    with pytest.raises(InvalidCheckpoint, match="shape"):
        checkpoints.validate(data)


def test_weights_that_blow_up_on_the_probe_gradient_are_refused():
    cfg = OptimizerConfig(hidden_size=4, num_layers=1, output_scale=1e5)
    weights = st_load(checkpoint_bytes(hidden_size=4))
    weights["head.weight"] = torch.full_like(weights["head.weight"], 3e38)
    weights["head.bias"] = torch.full_like(weights["head.bias"], 3e38)
    data = Checkpoint(cfg, weights).to_bytes()  # finite weights: the file itself is well formed
    with pytest.raises(InvalidCheckpoint, match="non-finite updates"):
        checkpoints.validate(data)


def test_a_bare_safetensors_file_with_a_separate_config_is_stored_self_describing():
    cfg = OptimizerConfig(hidden_size=4, num_layers=1)
    bare = st_save(st_load(checkpoint_bytes(hidden_size=4)))
    with pytest.raises(InvalidCheckpoint, match="no config"):
        checkpoints.validate(bare)
    ckpt, stored = checkpoints.validate(bare, config=cfg.to_dict())
    assert stored != bare and json.loads(read_metadata(stored)["config"]) == cfg.to_dict()
    assert Checkpoint.from_bytes(stored).config == ckpt.config == cfg
