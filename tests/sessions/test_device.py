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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
async def test_on_a_gpu_states_stay_in_its_memory_and_steps_answer_as_on_the_cpu():
    from service.sessions.memory_store import MemoryStore
    from service.sessions.service import SessionService
    from tests.sessions.fakes import FakeVersions
    from tests.sessions.test_service import SHAPES, ST, body, flat_updates, grads_for

    versions = FakeVersions()
    cpu = SessionService(MemoryStore(), versions)
    gpu = SessionService(MemoryStore(), versions, device="cuda")
    a, b = await cpu.create("k", "opt@prod", SHAPES), await gpu.create("k", "opt@prod", SHAPES)
    assert gpu.store.get(b.id).hc.device.type == "cuda"
    for k in range(3):
        grads = grads_for(k)
        step_a, ua = flat_updates(await cpu.step("k", a.id, body(k, grads, ST), ST), ST)
        step_b, ub = flat_updates(await gpu.step("k", b.id, body(k, grads, ST), ST), ST)
        assert step_a == step_b == k + 1
        torch.testing.assert_close(ub, ua, rtol=1e-5, atol=1e-6)
        assert gpu.store.get(b.id).hc.device.type == "cuda"
    # A state exported from the GPU resumes on the CPU, and the other way round.
    resumed = await cpu.create("k", None, None, resume_state=await gpu.export_state("k", b.id))
    back = await gpu.create("k", None, None, resume_state=await cpu.export_state("k", resumed.id))
    assert resumed.step == back.step == 3 and gpu.store.get(back.id).hc.device.type == "cuda"
