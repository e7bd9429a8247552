"""A session's LSTM state kept in bfloat16 or float16: half the bytes, the kernel's own bits, and a dtype
that survives export, resume, restarts and every store."""

from __future__ import annotations

import io

import pytest
import torch
from fastapi.testclient import TestClient

from client import Client, LocalOptimizer, RemoteOptimizer
from service import lopt
from service.app import create_app
from service.lopt import Checkpoint
from service.sessions.wire import WireFormat
from tests.sessions.test_api import SHAPES, ST_HEADERS, N, create, grads, post_step, updates_of

HALF = ["bfloat16", "float16"]


def expected_updates(ckpt_bytes: bytes, grads_list, dtype: torch.dtype) -> list[torch.Tensor]:
    ckpt = Checkpoint.from_bytes(ckpt_bytes)
    state, out = lopt.init(ckpt.config, N, dtype=dtype), []
    for g in grads_list:
        with torch.no_grad():
            u, state = lopt.step(ckpt.config, ckpt.weights, torch.cat([g[n].reshape(-1) for n in SHAPES]), state)
        out.append(u)
    return out


def create_half(client, headers, dtype: str) -> dict:
    r = client.post("/v1/sessions", json={"optimizer": "opt@prod", "shapes": SHAPES, "state_dtype": dtype},
                    headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


@pytest.mark.parametrize("dtype", HALF)
def test_a_half_state_holds_half_the_bytes_and_steps_as_the_kernel_does(client, headers, ckpt_bytes, dtype):
    full, half = create(client, headers), create_half(client, headers, dtype)
    assert full["state_dtype"] == "float32" and half["state_dtype"] == dtype
    floats = Checkpoint.from_bytes(ckpt_bytes).config.state_floats_per_coord
    assert half["state_bytes"] * 2 == full["state_bytes"] == N * floats * 4
    g = [grads(i) for i in range(4)]
    expected = expected_updates(ckpt_bytes, g, getattr(torch, dtype))
    for k in range(4):
        r = post_step(client, headers, half["id"], k, g[k], WireFormat.SAFETENSORS)
        assert r.status_code == 200, r.text
        assert torch.equal(updates_of(r, WireFormat.SAFETENSORS)[1], expected[k])
    # Rounding the state to half precision changes the updates after the first step, a little.
    full_updates = expected_updates(ckpt_bytes, g, torch.float32)
    assert not torch.equal(full_updates[3], expected[3])
    assert torch.allclose(full_updates[3], expected[3], rtol=0.05, atol=1e-3)


@pytest.mark.parametrize("dtype", HALF)
def test_a_half_state_exports_and_resumes_in_its_dtype(client, headers, ckpt_bytes, dtype):
    sid = create_half(client, headers, dtype)["id"]
    g = [grads(i) for i in range(3)]
    for k in range(2):
        post_step(client, headers, sid, k, g[k], WireFormat.JSON)
    state = client.get(f"/v1/sessions/{sid}/state", headers=headers).content
    client.delete(f"/v1/sessions/{sid}", headers=headers)
    resumed = client.post("/v1/sessions/resume", content=state, headers={**headers, **ST_HEADERS})
    assert resumed.status_code == 201, resumed.text
    floats = Checkpoint.from_bytes(ckpt_bytes).config.state_floats_per_coord
    assert resumed.json()["state_dtype"] == dtype and resumed.json()["state_bytes"] == N * floats * 2
    r = post_step(client, headers, resumed.json()["id"], 2, g[2], WireFormat.JSON)
    assert torch.equal(updates_of(r, WireFormat.JSON)[1], expected_updates(ckpt_bytes, g, getattr(torch, dtype))[2])


def test_an_unknown_state_dtype_is_refused_naming_the_field(client, headers):
    r = client.post("/v1/sessions", json={"optimizer": "opt", "shapes": SHAPES, "state_dtype": "float64"},
                    headers=headers)
    assert r.status_code == 422 and "state_dtype" in r.text
    assert client.get("/v1/sessions", headers=headers).json() == []


@pytest.mark.parametrize("settings", ["memory"], indirect=True)
def test_a_half_state_survives_a_graceful_restart(settings, headers, client, ckpt_bytes):
    sid = create_half(client, headers, "bfloat16")["id"]
    g = [grads(i) for i in range(2)]
    post_step(client, headers, sid, 0, g[0], WireFormat.SAFETENSORS)
    client.__exit__(None, None, None)
    with TestClient(create_app(settings)) as restarted:
        r = post_step(restarted, headers, sid, 1, g[1], WireFormat.SAFETENSORS)
        assert r.status_code == 200, r.text
        assert torch.equal(updates_of(r, WireFormat.SAFETENSORS)[1],
                           expected_updates(ckpt_bytes, g, torch.bfloat16)[1])
        assert restarted.get(f"/v1/sessions/{sid}", headers=headers).json()["state_dtype"] == "bfloat16"


@pytest.mark.parametrize("dtype", HALF)
def test_remote_and_local_optimizers_with_a_half_state_agree_bit_for_bit(client, headers, dtype):
    sdk = Client("http://testserver", headers["Authorization"].removeprefix("Bearer "), http_client=client)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    twin, third = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    twin.load_state_dict(model.state_dict())
    third.load_state_dict(model.state_dict())
    remote = RemoteOptimizer(model.parameters(), optimizer="opt", client=sdk, state_dtype=dtype)
    local = LocalOptimizer(twin.parameters(), checkpoint=sdk.optimizers.download("opt"), state_dtype=dtype)
    x, y = torch.randn(8, 4), torch.randn(8, 3)
    for m, opt in ((model, remote), (twin, local)):
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters(), strict=True))
    assert sdk.sessions.get(remote.session_id).state_dtype == dtype
    # The state_dict carries the dtype: a float32-built optimizer resumes it in the same dtype.
    saved = io.BytesIO()
    torch.save(remote.state_dict(), saved)
    resumed = RemoteOptimizer(third.parameters(), optimizer="opt", client=sdk)
    resumed.load_state_dict(torch.load(io.BytesIO(saved.getvalue()), weights_only=True))
    third.load_state_dict(model.state_dict())
    for m, opt in ((model, remote), (third, resumed)):
        opt.zero_grad()
        torch.nn.functional.mse_loss(m(x), y).backward()
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), third.parameters(), strict=True))
    assert sdk.sessions.get(resumed.session_id).state_dtype == dtype
    with pytest.raises(ValueError, match="state_dtype must be one of"):
        RemoteOptimizer(model.parameters(), optimizer="opt", client=sdk, state_dtype="float64")
