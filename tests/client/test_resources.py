"""Every resource of the sync Client against the real app: what it sends, what it returns, what it raises."""

from __future__ import annotations

import hashlib
import json

import httpx
import numpy as np
import pytest
import torch

import client
from client import Client
from service import lopt
from service.lopt import Checkpoint
from tests.client.conftest import BASE_URL, OPTIMIZER
from tests.conftest import checkpoint_bytes

SHAPES = {"fc.weight": [2, 3], "fc.bias": [2]}


def grads(seed: int) -> dict[str, np.ndarray]:
    g = np.random.default_rng(seed)
    return {n: (g.standard_normal(s) * 0.1).astype(np.float32) for n, s in SHAPES.items()}


def reference_updates(ckpt: bytes, steps: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """What service.lopt.step gives for these gradients, in the session's parameter order."""
    c = Checkpoint.from_bytes(ckpt)
    state, out = lopt.init(c.config, 8), []
    for g in steps:
        flat = torch.cat([torch.from_numpy(g[n]).reshape(-1) for n in SHAPES])
        with torch.no_grad():
            u, state = lopt.step(c.config, {k: v.float().contiguous() for k, v in c.weights.items()}, flat, state)
        out.append(u.numpy())
    return out


# --- optimizers ---------------------------------------------------------------------------------------------

def test_optimizers_list_get_versions_resolve(l2o: Client, ckpt: bytes):
    second = checkpoint_bytes(hidden_size=4, num_layers=1, seed=8)
    v2 = l2o.optimizers.upload(OPTIMIZER, second)
    assert (v2.name, v2.version, v2.reference, v2.source) == (OPTIMIZER, 2, "tiny:2", "upload")
    assert v2.sha256 == hashlib.sha256(second).hexdigest() and v2.config["hidden_size"] == 4

    [summary] = l2o.optimizers.list()
    assert (summary.name, summary.latest_version, summary.version_count) == (OPTIMIZER, 2, 2)
    detail = l2o.optimizers.get(OPTIMIZER)
    assert [v.version for v in detail.versions] == [1, 2]
    assert [v.version for v in l2o.optimizers.versions(OPTIMIZER)] == [1, 2]
    assert l2o.optimizers.version(OPTIMIZER, 1).sha256 == hashlib.sha256(ckpt).hexdigest()
    assert l2o.optimizers.resolve(OPTIMIZER).version == 2


def test_aliases_and_download(l2o: Client, ckpt: bytes):
    l2o.optimizers.upload(OPTIMIZER, checkpoint_bytes(hidden_size=4, num_layers=1, seed=8))
    alias = l2o.optimizers.set_alias(OPTIMIZER, "prod", 1)
    assert (alias.alias, alias.version, alias.reference) == ("prod", 1, "tiny@prod")
    assert l2o.optimizers.get(OPTIMIZER).aliases == {"prod": 1}

    file = l2o.optimizers.download("tiny@prod")
    assert (file.name, file.version, file.reference) == (OPTIMIZER, 1, "tiny:1")
    assert file.data == ckpt and file.sha256 == hashlib.sha256(ckpt).hexdigest()

    l2o.optimizers.delete_alias(OPTIMIZER, "prod")
    with pytest.raises(client.NotFoundError, match="no alias 'prod'"):
        l2o.optimizers.resolve("tiny@prod")


def test_upload_from_a_file_with_a_config(l2o: Client, tmp_path):
    path = Checkpoint.from_bytes(checkpoint_bytes(hidden_size=4, num_layers=1, seed=9)).save(tmp_path / "c")
    version = l2o.optimizers.upload("from-file", path / "weights.safetensors")
    assert version.reference == "from-file:1"
    l2o.optimizers.delete_version("from-file", 1)
    with pytest.raises(client.NotFoundError) as info:
        l2o.optimizers.version("from-file", 1)
    assert info.value.status_code == 404 and "from-file" in info.value.message


def test_upload_errors_carry_the_servers_code_and_message(l2o: Client):
    with pytest.raises(client.InvalidCheckpointError) as info:
        l2o.optimizers.upload(OPTIMIZER, b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    assert info.value.code == "invalid_checkpoint" and info.value.status_code == 422 and info.value.message
    with pytest.raises(client.InvalidNameError):
        l2o.optimizers.upload("Not A Name", checkpoint_bytes())


def test_a_download_whose_bytes_do_not_match_the_digest_is_refused(l2o: Client, monkeypatch):
    real_send = l2o.send

    def corrupting_send(options):
        response = real_send(options)
        if options.path.endswith("/checkpoint"):
            response._content = response.content[:-1] + bytes([response.content[-1] ^ 1])
        return response

    monkeypatch.setattr(l2o, "send", corrupting_send)
    with pytest.raises(client.DigestMismatchError, match="damaged"):
        l2o.optimizers.download(OPTIMIZER)


# --- sessions --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("wire", ["safetensors", "json"])
def test_session_steps_match_lopt(l2o: Client, ckpt: bytes, wire: str):
    session = l2o.sessions.create(OPTIMIZER, SHAPES)
    assert (session.step, session.n_coords, session.optimizer.reference) == (0, 8, "tiny:1")
    steps = [grads(i) for i in range(3)]
    expected = reference_updates(ckpt, steps)
    for i, g in enumerate(steps):
        result = l2o.sessions.step(session.id, step=i, grads=g, wire=wire)
        assert result.step == i + 1
        assert {n: u.shape for n, u in result.updates.items()} == {n: tuple(s) for n, s in SHAPES.items()}
        flat = np.concatenate([result.updates[n].reshape(-1) for n in SHAPES])
        assert flat.dtype == np.float32 and np.array_equal(flat, expected[i])  # bit for bit
    assert l2o.sessions.get(session.id).step == 3


def test_sessions_accept_torch_tensors_in_any_float_dtype(l2o: Client):
    session = l2o.sessions.create(OPTIMIZER, SHAPES)
    g = {n: torch.randn(s, dtype=torch.bfloat16) for n, s in SHAPES.items()}
    as_f32 = {n: t.float() for n, t in g.items()}
    first = l2o.sessions.step(session.id, step=0, grads=g)
    other = l2o.sessions.create(OPTIMIZER, SHAPES)
    again = l2o.sessions.step(other.id, step=0, grads=as_f32)
    assert all(np.array_equal(first.updates[n], again.updates[n]) for n in SHAPES)


def test_session_list_get_state_resume_delete(l2o: Client):
    session = l2o.sessions.create(OPTIMIZER, SHAPES)
    l2o.sessions.step(session.id, step=0, grads=grads(0))
    assert [s.id for s in l2o.sessions.list()] == [session.id]

    state = l2o.sessions.state(session.id)
    assert (state.reference, state.step, state.hc.shape) == ("tiny:1", 1, (8, 1, 2, 4))
    assert state.shapes == {n: tuple(s) for n, s in SHAPES.items()}
    resumed = l2o.sessions.resume(state)
    assert resumed.id != session.id and resumed.step == 1
    a = l2o.sessions.step(session.id, step=1, grads=grads(1))
    b = l2o.sessions.step(resumed.id, step=1, grads=grads(1))
    assert all(np.array_equal(a.updates[n], b.updates[n]) for n in SHAPES)

    l2o.sessions.delete(session.id)
    with pytest.raises(client.SessionNotFoundError) as info:
        l2o.sessions.get(session.id)
    assert not isinstance(info.value, client.SessionLostError)  # this client deleted it: not lost
    assert [s.id for s in l2o.sessions.list()] == [resumed.id]


def test_step_errors(l2o: Client):
    session = l2o.sessions.create(OPTIMIZER, SHAPES)
    with pytest.raises(client.StepConflictError) as info:
        l2o.sessions.step(session.id, step=5, grads=grads(0))
    assert info.value.expected == 0 and "expects step 0" in info.value.message
    bad = grads(0) | {"fc.bias": np.array([np.nan, 0.0], dtype=np.float32)}
    with pytest.raises(client.InvalidGradientsError, match="fc.bias"):
        l2o.sessions.step(session.id, step=0, grads=bad)
    with pytest.raises(client.InvalidGradientsError, match="missing"):
        l2o.sessions.step(session.id, step=0, grads={"fc.weight": grads(0)["fc.weight"]})
    with pytest.raises(ValueError, match="step must be"):
        l2o.sessions.step(session.id, step=-1, grads=grads(0))
    with pytest.raises(client.InvalidReferenceError):
        l2o.sessions.create("tiny:x", SHAPES)
    assert l2o.sessions.get(session.id).step == 0  # nothing above changed it


def test_a_session_the_server_lost_raises_session_lost(l2o: Client, app):
    session = l2o.sessions.create(OPTIMIZER, SHAPES)
    l2o.sessions.step(session.id, step=0, grads=grads(0))
    app.state.sessions.store.delete(session.id)  # what a crash of a memory-store server does
    with pytest.raises(client.SessionLostError, match="state_dict") as info:
        l2o.sessions.step(session.id, step=1, grads=grads(1))
    assert isinstance(info.value, client.SessionNotFoundError) and info.value.status_code == 404
    # A session this client never opened is only not found.
    with pytest.raises(client.SessionNotFoundError) as info:
        l2o.sessions.get("s_nope")
    assert type(info.value) is client.SessionNotFoundError


def test_another_keys_session_is_not_found_and_scopes_are_enforced(l2o: Client, make_client):
    session = l2o.sessions.create(OPTIMIZER, SHAPES)
    with make_client("optimize") as other:
        with pytest.raises(client.SessionNotFoundError):
            other.sessions.get(session.id)
        with pytest.raises(client.PermissionDeniedError) as info:
            other.optimizers.set_alias(OPTIMIZER, "prod", 1)
        assert info.value.status_code == 403 and info.value.code == "forbidden"
    with Client(BASE_URL, "l2o_wrong", http_client=l2o._http) as wrong:
        with pytest.raises(client.AuthenticationError):
            wrong.optimizers.list()


# --- jobs -------------------------------------------------------------------------------------------------

TINY_JOB = {
    "family": {"name": "quadratic", "params": {"dim": 3}},
    "optimizer": {"hidden_size": 4, "num_layers": 1},
    "training": {"iterations": 4, "horizon": 10, "unroll": 5, "instances": 2, "eval_every": 2, "eval_instances": 2,
                 "resume_every": 2},
    "evaluation": {"instances": 2, "steps": 10, "tune_instances": 2, "lr_grid": [0.1], "baselines": ["adam"]},
}


def test_jobs_submit_events_wait_list_get(l2o: Client, capsys):
    job = l2o.jobs.submit(TINY_JOB, name="tiny-job")
    assert job.state in ("queued", "running") and job.name == "tiny-job" and job.progress.total_iterations == 4
    events = list(l2o.jobs.events(job.id, timeout=60))
    assert events[-1].event == "end" and events[-1].job.state == "succeeded"
    assert all(e.event == "progress" for e in events[:-1])

    done = l2o.jobs.wait(job.id, progress=True, timeout=60)
    assert done.state == "succeeded" and done.result.reference == "tiny-job:1"
    assert "4/4" in capsys.readouterr().err  # the progress bar
    assert l2o.optimizers.version("tiny-job", 1).job_id == job.id
    assert [j.id for j in l2o.jobs.list()] == [job.id]
    assert l2o.jobs.list(state="running") == []
    assert l2o.jobs.get(job.id).finished_at is not None
    curve = l2o.jobs.curve(job.id)
    assert curve.iterations == [1, 2, 3, 4] and curve.meta_loss[-1] == done.progress.meta_loss
    assert curve.eval_loss[-1] == done.progress.eval_loss
    with pytest.raises(client.JobFinishedError):
        l2o.jobs.cancel(job.id)


def test_jobs_cancel_and_errors(l2o: Client, make_client):
    slow = {**TINY_JOB, "training": {**TINY_JOB["training"], "iterations": 10_000}}
    job = l2o.jobs.submit(slow, name="slow-job")
    cancelled = l2o.jobs.cancel(job.id)
    assert cancelled.cancel_requested or cancelled.state == "cancelled"
    assert l2o.jobs.wait(job.id, timeout=60).state == "cancelled"
    with pytest.raises(client.UnprocessableEntityError, match="horizon"):
        l2o.jobs.submit(TINY_JOB, name="bad", training={"horizon": 7, "unroll": 5})
    with pytest.raises(ValueError, match="name"):
        l2o.jobs.submit(TINY_JOB)
    with pytest.raises(client.JobNotFoundError):
        l2o.jobs.get("no-such-job")
    with make_client("optimize") as no_train, pytest.raises(client.PermissionDeniedError):
        no_train.jobs.submit(TINY_JOB, name="x")


def test_job_events_skip_keep_alives_and_a_stream_of_another_type_is_a_response_error(tmp_path):
    job = {"id": "j1", "name": "n", "state": "succeeded", "progress": {"iteration": 1, "total_iterations": 1}}
    # The server sends an id with each event; a keep-alive after one must not read as an event of its own.
    stream = (": keep-alive\n\nevent: progress\nid: 1\ndata: " + json.dumps(job)[:20]
              + "\ndata: " + json.dumps(job)[20:]
              + "\n\n: keep-alive\n\nevent: end\ndata: " + json.dumps(job) + "\n\n").encode()

    def answer(content_type: str) -> httpx.MockTransport:
        headers = {"Content-Type": content_type}
        return httpx.MockTransport(lambda r: httpx.Response(200, content=stream, headers=headers))

    with Client(BASE_URL, "k", transport=answer("text/event-stream; charset=utf-8")) as c:
        events = list(c.jobs.events("j1"))
    assert [(e.event, e.job.id, e.job.state) for e in events] == [("progress", "j1", "succeeded"),
                                                                 ("end", "j1", "succeeded")]
    with Client(BASE_URL, "k", transport=answer("text/html")) as c, \
            pytest.raises(client.APIResponseError, match="text/event-stream"):
        list(c.jobs.events("j1"))


# --- finding the server and the key ----------------------------------------------------------------------

def test_url_and_key_from_the_environment_then_the_key_file(monkeypatch, tmp_path):
    def found() -> tuple[str, str]:
        with Client() as c:
            return c.base_url, c.api_key

    monkeypatch.setenv("L2O_URL", "http://example.invalid:9/")
    monkeypatch.setenv("L2O_API_KEY", "l2o_from_env")
    assert found() == ("http://example.invalid:9", "l2o_from_env")
    monkeypatch.delenv("L2O_API_KEY")
    monkeypatch.setenv("L2O_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("L2O_URL", "http://127.0.0.1:9/")   # the local admin key goes to a local server only
    (tmp_path / "admin.key").write_text("l2o_from_file\n")
    assert found()[1] == "l2o_from_file"
    with Client(api_key="l2o_given") as given:
        assert given.api_key == "l2o_given"
    (tmp_path / "admin.key").unlink()
    with pytest.raises(client.L2OError, match="admin.key"):
        Client()


def test_the_data_dir_is_l2o_data_dir_else_the_xdg_data_home_the_server_uses_too(monkeypatch, tmp_path):
    from client._base import data_dir
    from service.config import Settings

    monkeypatch.delenv("L2O_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert data_dir() == Settings().data_dir == tmp_path / "xdg" / "l2o"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_dir() == Settings().data_dir == tmp_path / "home" / ".local" / "share" / "l2o"
    monkeypatch.setenv("L2O_DATA_DIR", str(tmp_path / "given"))
    assert data_dir() == Settings().data_dir == tmp_path / "given"


def test_an_unreachable_server_is_a_connection_error():
    with Client("http://127.0.0.1:9", "k", max_retries=1) as c, \
            pytest.raises(client.APIConnectionError, match="is the l2o server running"):
        c.optimizers.list()
