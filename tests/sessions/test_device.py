"""L2O_STEP_DEVICE: where steps run. Checked at start, so a misconfigured server never answers a step."""

import pydantic
import pytest
import torch
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_step_device_without_a_gpu_stops_the_start_naming_the_setting(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", step_device="cuda", register_pretrained=False)
    with pytest.raises(RuntimeError, match="L2O_STEP_DEVICE=cuda but torch sees no CUDA device"):
        with TestClient(create_app(settings)):
            pass


@pytest.mark.parametrize("name", ["tpu", "cuda:x", "gpu", ""])
def test_an_unknown_step_device_is_refused(tmp_path, name):
    with pytest.raises(pydantic.ValidationError, match="step_device"):
        Settings(data_dir=tmp_path, step_device=name)


def test_auto_steps_on_the_gpu_when_there_is_one_else_on_the_cpu(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", step_device="auto", register_pretrained=False)
    with TestClient(create_app(settings)) as client:
        expected = "cuda" if torch.cuda.is_available() else "cpu"
        assert client.app.state.sessions.device.type == expected
