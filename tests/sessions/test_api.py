"""Sessions and steps through the real app: both wire formats, retries, limits, isolation, restarts."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from fastapi.testclient import TestClient

from service import lopt
from service.app import create_app
from service.lopt import Checkpoint
from service.sessions import wire
from service.sessions.wire import StepMessage, WireFormat
from tests.sessions.fakes import FakeClock

SHAPES = {"layer.weight": [3, 2], "layer.bias": [3]}
N = 9
ST_HEADERS = {"Content-Type": wire.SAFETENSORS_TYPE}


def grads(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) * 0.1 for n, s in SHAPES.items()}


def expected_updates(ckpt_bytes, grads_list):
    ckpt = Checkpoint.from_bytes(ckpt_bytes)
    state, out = lopt.init(ckpt.config, N), []
    for g in grads_list:
        with torch.no_grad():
            u, state = lopt.step(ckpt.config, ckpt.weights, torch.cat([g[n].reshape(-1) for n in SHAPES]), state)
        out.append(u)
    return out


def post_step(client, headers, sid, step, g, fmt):
    body = wire.encode(StepMessage(step, g), fmt, field="grads")
    return client.post(f"/v1/sessions/{sid}/step", content=body,
                       headers={**headers, "Content-Type": fmt.content_type})


def updates_of(response, fmt):
    m = wire.decode(response.content, fmt, field="updates")
    return m.step, torch.cat([m.tensors[n].reshape(-1) for n in SHAPES])


def create(client, headers, ref="opt@prod"):
    r = client.post("/v1/sessions", json={"optimizer": ref, "shapes": SHAPES}, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


def test_a_session_from_create_to_delete(client, headers, ckpt_bytes):
    s = create(client, headers)
    assert s["step"] == 0 and s["n_coords"] == N and s["shapes"] == SHAPES
    assert s["optimizer"]["reference"] == "opt:1"
    assert s["optimizer"]["digest"] == hashlib.sha256(ckpt_bytes).hexdigest()
    # float32: the LSTM (1 layer, 4 units) holds h and c, the feature MLP its moments (8 or 9 floats)
    assert s["state_bytes"] == N * Checkpoint.from_bytes(ckpt_bytes).config.state_floats_per_coord * 4
    sid = s["id"]
    g = [grads(i) for i in range(3)]
    expected = expected_updates(ckpt_bytes, g)

    r0 = post_step(client, headers, sid, 0, g[0], WireFormat.JSON)
    assert r0.status_code == 200 and r0.headers["content-type"] == wire.JSON_TYPE
    assert r0.json()["step"] == 1 and list(r0.json()["updates"]) == list(SHAPES)
    assert torch.equal(updates_of(r0, WireFormat.JSON)[1], expected[0])
    r1 = post_step(client, headers, sid, 1, g[1], WireFormat.SAFETENSORS)
    assert r1.headers["content-type"] == wire.SAFETENSORS_TYPE
    step, updates = updates_of(r1, WireFormat.SAFETENSORS)
    assert step == 2 and torch.equal(updates, expected[1])
    octet = wire.encode(StepMessage(2, g[2]), WireFormat.SAFETENSORS, field="grads")
    r2 = client.post(f"/v1/sessions/{sid}/step", content=octet,
                     headers={**headers, "Content-Type": "application/octet-stream"})
    assert r2.status_code == 200 and torch.equal(updates_of(r2, WireFormat.SAFETENSORS)[1], expected[2])

    info = client.get(f"/v1/sessions/{sid}", headers=headers).json()
    assert info["step"] == 3 and info["expires_at"] > info["last_used_at"]
    assert [x["id"] for x in client.get("/v1/sessions", headers=headers).json()] == [sid]
    assert client.delete(f"/v1/sessions/{sid}", headers=headers).status_code == 204
    r = client.get(f"/v1/sessions/{sid}", headers=headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"


def test_retry_replays_bytes_and_a_gap_is_a_409(client, headers):
    sid = create(client, headers)["id"]
    first = post_step(client, headers, sid, 0, grads(0), WireFormat.SAFETENSORS)
    again = post_step(client, headers, sid, 0, grads(0), WireFormat.SAFETENSORS)
    assert again.status_code == 200 and again.content == first.content
    r = post_step(client, headers, sid, 5, grads(1), WireFormat.JSON)
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "step_conflict" and r.json()["error"]["detail"] == {"expected": 1, "got": 5}
    assert "expects step 1" in r.json()["error"]["message"]
    assert client.get(f"/v1/sessions/{sid}", headers=headers).json()["step"] == 1


def test_bad_bodies_are_refused_and_change_nothing(client, headers):
    sid = create(client, headers)["id"]
    post_step(client, headers, sid, 0, grads(0), WireFormat.JSON)
    state = client.get(f"/v1/sessions/{sid}/state", headers=headers).content
    url = f"/v1/sessions/{sid}/step"
    good = wire.encode(StepMessage(1, grads(1)), WireFormat.SAFETENSORS, field="grads")
    cases = [
        (client.post(url, content=b"x" * 100_001, headers={**headers, **ST_HEADERS}), 413, "payload_too_large"),
        # No Content-Length (chunked): counted as it streams in, refused once past the limit.
        (client.post(url, content=iter([b"x" * 60_000, b"x" * 60_000]), headers={**headers, **ST_HEADERS}),
         413, "payload_too_large"),
        (client.post(url, content=good, headers={**headers, "Content-Type": "text/plain"}), 415,
         "unsupported_media_type"),
        (client.post(url, content=good[:-3], headers={**headers, **ST_HEADERS}), 400, "malformed_body"),
        (client.post(url, content=json.dumps({"step": 1, "grads": {"layer.bias": [0.0] * 3}}),
                     headers={**headers, "Content-Type": "application/json"}), 422, "invalid_gradients"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code and response.json()["error"]["message"]
    assert client.get(f"/v1/sessions/{sid}/state", headers=headers).content == state


def test_bad_session_specs_are_refused(client, headers):
    for spec, status, fragment in [
        ({"optimizer": "opt", "shapes": {"w": ["3"]}}, 422, "shapes.w.0"),
        ({"optimizer": "opt", "shapes": {"w": [3]}, "extra": 1}, 422, "extra"),
        ({"optimizer": "nope", "shapes": {"w": [3]}}, 404, "nope"),
        ({"optimizer": "opt:x", "shapes": {"w": [3]}}, 422, "opt:x"),
        ({"optimizer": "opt", "shapes": {"w": [10**7]}}, 422, "coordinates"),
    ]:
        r = client.post("/v1/sessions", json=spec, headers=headers)
        assert r.status_code == status and fragment in r.json()["error"]["message"], r.text
    assert client.get("/v1/sessions", headers=headers).json() == []


def test_another_key_cannot_see_or_touch_a_session(client, headers, make_key):
    sid = create(client, headers)["id"]
    other = {"Authorization": f"Bearer {make_key('optimize')}"}
    for method, path in [("GET", ""), ("DELETE", ""), ("GET", "/state")]:
        r = client.request(method, f"/v1/sessions/{sid}{path}", headers=other)
        assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"
    assert post_step(client, other, sid, 0, grads(0), WireFormat.JSON).status_code == 404
    assert client.get("/v1/sessions", headers=other).json() == []
    assert client.get(f"/v1/sessions/{sid}", headers=headers).json()["step"] == 0


def test_an_idle_session_answers_410(app, client, headers):
    clock = FakeClock()
    app.state.sessions.clock = clock
    sid = create(client, headers)["id"]
    clock.advance(3601)
    r = post_step(client, headers, sid, 0, grads(0), WireFormat.JSON)
    assert r.status_code == 410 and r.json()["error"]["code"] == "session_expired"
    assert "expired" in r.json()["error"]["message"]


def test_a_version_in_use_cannot_be_deleted(client, headers, admin_headers):
    sid = create(client, headers, "opt:1")["id"]
    r = client.delete("/v1/optimizers/opt/versions/1", headers=admin_headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "version_in_use"
    client.delete(f"/v1/sessions/{sid}", headers=headers)
    assert client.delete("/v1/optimizers/opt/versions/1", headers=admin_headers).status_code == 204


def test_export_and_resume_over_http(client, headers, ckpt_bytes):
    sid = create(client, headers)["id"]
    g = [grads(i) for i in range(3)]
    post_step(client, headers, sid, 0, g[0], WireFormat.JSON)
    post_step(client, headers, sid, 1, g[1], WireFormat.JSON)
    state = client.get(f"/v1/sessions/{sid}/state", headers=headers)
    assert state.status_code == 200 and state.headers["content-type"] == wire.SAFETENSORS_TYPE
    client.delete(f"/v1/sessions/{sid}", headers=headers)

    r = client.post("/v1/sessions/resume", content=state.content, headers={**headers, **ST_HEADERS})
    assert r.status_code == 201, r.text
    assert r.json()["step"] == 2 and r.json()["optimizer"]["reference"] == "opt:1"
    step3 = post_step(client, headers, r.json()["id"], 2, g[2], WireFormat.JSON)
    assert torch.equal(updates_of(step3, WireFormat.JSON)[1], expected_updates(ckpt_bytes, g)[2])

    bad = client.post("/v1/sessions/resume?optimizer=opt:2", content=state.content, headers={**headers, **ST_HEADERS})
    assert bad.status_code == 404  # opt has no version 2
    as_json = client.post("/v1/sessions/resume", content=state.content,
                          headers={**headers, "Content-Type": "application/json"})
    assert as_json.status_code == 415


@pytest.mark.parametrize("settings", ["memory"], indirect=True)
def test_memory_sessions_survive_a_graceful_restart(settings, headers, client, ckpt_bytes):
    sid = create(client, headers)["id"]
    g = [grads(i) for i in range(2)]
    post_step(client, headers, sid, 0, g[0], WireFormat.SAFETENSORS)
    client.__exit__(None, None, None)  # the lifespan's shutdown, as on SIGTERM (the fixture's exit is then a no-op)
    assert (settings.data_dir / "sessions.safetensors").exists()

    with TestClient(create_app(settings)) as restarted:
        r = post_step(restarted, headers, sid, 1, g[1], WireFormat.SAFETENSORS)
        assert r.status_code == 200, r.text
        assert torch.equal(updates_of(r, WireFormat.SAFETENSORS)[1], expected_updates(ckpt_bytes, g)[1])


@pytest.mark.parametrize("settings", ["redis"], indirect=True)
def test_redis_sessions_are_shared_by_every_api_process(settings, headers, client, ckpt_bytes):
    sid = create(client, headers)["id"]
    g = [grads(i) for i in range(2)]
    first = post_step(client, headers, sid, 0, g[0], WireFormat.JSON)
    with TestClient(create_app(settings)) as second_process:
        replay = post_step(second_process, headers, sid, 0, g[0], WireFormat.JSON)
        assert replay.content == first.content
        r = post_step(second_process, headers, sid, 1, g[1], WireFormat.JSON)
        assert torch.equal(updates_of(r, WireFormat.JSON)[1], expected_updates(ckpt_bytes, g)[1])
    assert client.get(f"/v1/sessions/{sid}", headers=headers).json()["step"] == 2


@pytest.mark.parametrize("settings", ["memory"], indirect=True)
def test_several_workers_refuse_the_per_process_memory_store(settings):
    with pytest.raises(RuntimeError, match="L2O_SESSION_STORE=redis"):
        with TestClient(create_app(settings.model_copy(update={"workers": 2}))):
            pass


def test_the_step_kernel_is_warmed_up_at_start(settings, monkeypatch):
    """The kernel is built (or loaded) at start, once, for the config and device steps run with, before the
    first request is served; its time is kept for reports."""
    from service.lopt import kernel

    warmed = []
    real_warmup = kernel.warmup
    monkeypatch.setattr(kernel, "warmup", lambda config, device, *rest: warmed.append((config, str(device)))
                        or real_warmup(config, device, *rest))
    app = create_app(settings)
    assert warmed == []
    with TestClient(app) as client:
        assert warmed == [(lopt.OptimizerConfig(), settings.step_device)]
        assert client.app.state.kernel_warmup_s >= 0.0
        assert client.get("/healthz").status_code == 200
    assert len(warmed) == 1


def test_step_answers_and_errors_are_counted_under_the_route(client, headers):
    """A step's answer, its errors (each with its code) and its metrics, as the route gives them; other
    methods on its path are 405."""
    from tests.api.test_health import metric

    sid = create(client, headers)["id"]
    route = "/v1/sessions/{session_id}/step"
    before = client.get("/metrics").text
    ok = post_step(client, headers, sid, 0, grads(0), WireFormat.SAFETENSORS)
    assert ok.status_code == 200 and ok.headers["cache-control"] == "no-store"
    assert updates_of(ok, WireFormat.SAFETENSORS)[0] == 1
    refused = {
        "no key": client.post(f"/v1/sessions/{sid}/step", content=b"{}", headers=ST_HEADERS),
        "unknown session": post_step(client, headers, "s_nope", 0, grads(0), WireFormat.JSON),
        "wrong type": client.post(f"/v1/sessions/{sid}/step", content=b"x",
                                  headers={**headers, "Content-Type": "text/plain"}),
        "stale step": post_step(client, headers, sid, 5, grads(0), WireFormat.JSON),
    }
    codes = {what: (r.status_code, r.json()["error"]["code"]) for what, r in refused.items()}
    assert codes == {"no key": (401, "unauthorized"), "unknown session": (404, "session_not_found"),
                     "wrong type": (415, "unsupported_media_type"), "stale step": (409, "step_conflict")}
    after = client.get("/metrics").text
    assert metric(after, "l2o_http_requests_total", method="POST", route=route, status="200") - \
        metric(before, "l2o_http_requests_total", method="POST", route=route, status="200") == 1
    assert metric(after, "l2o_http_errors_total", method="POST", route=route, code="step_conflict") - \
        metric(before, "l2o_http_errors_total", method="POST", route=route, code="step_conflict") == 1
    assert client.get(f"/v1/sessions/{sid}/step", headers=headers).status_code == 405
