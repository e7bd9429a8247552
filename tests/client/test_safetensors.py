"""The SDK's numpy safetensors codec against torch's own bfloat16: the bits a half-precision state travels in."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client import _safetensors
from service.sessions import wire


def test_bfloat16_rounds_as_torch_does_and_reads_back_exactly():
    values = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 10 ** torch.linspace(-30, 30, 4096)
    values[:4] = torch.tensor([0.0, -0.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8])   # ties: to even, both ways
    body = _safetensors.dumps({"hc": values.numpy()}, {"k": "v"}, bfloat16=["hc"])
    assert _safetensors.dtype_codes(body) == {"hc": "BF16"}
    # The server's reader (torch) sees exactly torch's own rounding of the values.
    _, tensors = wire.read_safetensors(bytearray(body), dtypes={"BF16": torch.bfloat16})
    assert torch.equal(tensors["hc"].view(torch.int16), values.to(torch.bfloat16).view(torch.int16))
    meta, arrays = _safetensors.loads(body)
    assert meta == {"k": "v"} and arrays["hc"].dtype == np.float32
    assert np.array_equal(arrays["hc"], values.to(torch.bfloat16).float().numpy())


def test_uint16_arrays_are_not_taken_for_bfloat16():
    with pytest.raises(TypeError, match="cannot send"):
        _safetensors.dumps({"x": np.zeros(3, dtype=np.uint16)})
