"""Jobs over HTTP through the real app, on both executors: submit, watch, publish, cancel, fail, ownership."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from service.lopt import Checkpoint, init, step
from service.lopt.config import FEATURE_MLP_SWITCHES
from tests.jobs.conftest import DIVERGING, events, get_job, tiny_spec, wait_for, wait_for_state


def submit(client, headers, spec) -> dict:
    response = client.post("/v1/jobs", json=spec, headers=headers)
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"/v1/jobs/{response.json()['id']}"
    return response.json()


def test_tiny_job_end_to_end(client, train_headers, workers):
    job = submit(client, train_headers, tiny_spec("tiny-e2e"))
    assert job["state"] == "queued" and job["name"] == "tiny-e2e" and job["result"] is None
    assert job["progress"]["total_iterations"] == 6 and job["attempts"] == 0
    # The stored spec is complete: defaults the client left out are filled in.
    assert job["spec"]["family"]["params"] == {"dim": 3, "init_std": 0.01}
    assert job["spec"]["optimizer"]["preprocess"] == "log_sign" and job["spec"]["training"]["meta_lr"] == 1e-3
    workers.start()

    stream = events(client, train_headers, job["id"])
    kinds = [kind for kind, _ in stream]
    assert kinds[-1] == "end" and set(kinds[:-1]) <= {"progress"}
    iterations = [data["progress"]["iteration"] for _, data in stream]
    assert iterations == sorted(iterations) and iterations[-1] == 6
    assert any(data["state"] == "running" for _, data in stream), "no progress was streamed while it ran"

    done = stream[-1][1]
    assert done == get_job(client, train_headers, job["id"])
    assert done["state"] == "succeeded" and done["error"] is None and done["attempts"] == 1
    assert done["result"] == {"name": "tiny-e2e", "version": 1, "reference": "tiny-e2e:1"}
    p = done["progress"]
    assert p["meta_loss"] is not None and p["eval_loss"] is not None and p["elapsed_s"] > 0
    assert p["eta_s"] is None and p["phase"] is None and p["resumed_from"] is None
    assert done["device"] == "cpu" and done["started_at"] <= done["finished_at"]

    # The registry holds the version, linked to the job, with its evaluation report.
    version = client.get("/v1/optimizers/tiny-e2e/versions/1", headers=train_headers).json()
    assert version["source"] == "job" and version["job_id"] == job["id"]
    report = version["evaluation"]
    assert set(report["curves"]) == {"lstm", "sgd", "adam"} and report["steps"] == 10
    assert report["n_instances"] == 3 and set(report["learning_rates"]) == {"sgd", "adam"}
    assert all(lr in (0.01, 0.1) for lr in report["learning_rates"].values())
    assert all(len(c["mean"]) == 11 for c in report["curves"].values())  # θ_0 to θ_10

    # Its checkpoint loads, carries the spec's architecture and provenance, and steps.
    data = client.get("/v1/optimizers/tiny-e2e/versions/1/checkpoint", headers=train_headers).content
    checkpoint = Checkpoint.from_bytes(data, expected_sha256=version["sha256"])
    assert (checkpoint.config.hidden_size, checkpoint.config.num_layers) == (4, 1)
    assert checkpoint.config.trained_on["family"] == "quadratic"
    assert checkpoint.config.trained_on["settings"]["iterations"] == 6
    grads = torch.randn(7)
    with torch.no_grad():
        updates, _ = step(checkpoint.config, checkpoint.weights, grads, init(checkpoint.config, 7))
    assert torch.isfinite(updates).all()

    # Its curves hold every iteration, the validation loss where validation ran (every 3 and the last), and
    # end on the losses the job reports.
    curve = client.get(f"/v1/jobs/{job['id']}/curve", headers=train_headers).json()
    assert curve["iterations"] == [1, 2, 3, 4, 5, 6]
    assert all(loss is not None and loss > 0 for loss in curve["meta_loss"])
    assert [i for i, loss in zip(curve["iterations"], curve["eval_loss"], strict=True) if loss is not None] == [3, 6]
    assert curve["meta_loss"][-1] == p["meta_loss"] and curve["eval_loss"][-1] == p["eval_loss"]

    # A finished job cannot be cancelled.
    refused = client.post(f"/v1/jobs/{job['id']}/cancel", headers=train_headers)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "job_finished"


def test_diverging_job_fails_and_registers_nothing(client, train_headers, workers):
    job = submit(client, train_headers, tiny_spec("diverges", **DIVERGING))
    workers.start()
    done = wait_for_state(client, train_headers, job["id"], "succeeded", "failed", "cancelled")
    assert done["state"] == "failed" and done["result"] is None
    assert done["error"].startswith("meta-training diverged: meta-loss became nan at iteration 1")
    assert "lower meta_lr or output scale" in done["error"]
    assert client.get("/v1/optimizers/diverges", headers=train_headers).status_code == 404
    assert events(client, train_headers, job["id"])[-1][0] == "end"  # a finished job's stream ends at once


def test_cancel_queued_and_running(client, train_headers, workers):
    running = submit(client, train_headers, tiny_spec("runs-long", training={"iterations": 100_000}))
    workers.start()
    wait_for(lambda: get_job(client, train_headers, running["id"])["progress"]["iteration"] >= 1,
             what="the long job to start iterating")
    # One job runs at a time, so this one waits in the queue.
    queued = submit(client, train_headers, tiny_spec("never-runs"))

    cancelled = client.post(f"/v1/jobs/{queued['id']}/cancel", headers=train_headers)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    flagged = client.post(f"/v1/jobs/{running['id']}/cancel", headers=train_headers).json()
    assert flagged["cancel_requested"] is True and flagged["state"] in ("running", "cancelled")

    stopped = wait_for_state(client, train_headers, running["id"], "cancelled", "succeeded", "failed", timeout=30)
    assert stopped["state"] == "cancelled" and stopped["result"] is None
    assert stopped["progress"]["iteration"] < 100_000 and stopped["finished_at"] is not None

    # Jobs run in the order they came, so once a later job is done the worker has been past the cancelled one:
    # it must not have started it.
    later = submit(client, train_headers, tiny_spec("after", training={"iterations": 2, "eval_every": 1}))
    assert wait_for_state(client, train_headers, later["id"], "succeeded", "failed")["state"] == "succeeded"
    never = get_job(client, train_headers, queued["id"])
    assert never["state"] == "cancelled" and never["attempts"] == 0 and never["started_at"] is None
    again = client.post(f"/v1/jobs/{queued['id']}/cancel", headers=train_headers)
    assert again.status_code == 200 and again.json()["state"] == "cancelled"  # cancelling twice is harmless
    for name in ("runs-long", "never-runs"):
        assert client.get(f"/v1/optimizers/{name}", headers=train_headers).status_code == 404


def test_jobs_belong_to_their_key(client, make_key, train_headers):
    job = submit(client, train_headers, tiny_spec("mine", training={"iterations": 2, "eval_every": 1}))
    other = {"Authorization": f"Bearer {make_key('train', name='other')}"}
    admin = {"Authorization": f"Bearer {make_key('admin', name='admin')}"}
    for method, path in [("GET", ""), ("GET", "/events"), ("GET", "/curve"), ("POST", "/cancel")]:
        response = client.request(method, f"/v1/jobs/{job['id']}{path}", headers=other)
        assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found"
    assert client.get("/v1/jobs", headers=other).json() == []
    assert [j["id"] for j in client.get("/v1/jobs", headers=train_headers).json()] == [job["id"]]
    # Admins see every job.
    assert [j["id"] for j in client.get("/v1/jobs", headers=admin).json()] == [job["id"]]
    assert client.get(f"/v1/jobs/{job['id']}", headers=admin).status_code == 200
    assert client.get("/v1/jobs/nope", headers=admin).status_code == 404
    assert client.get("/v1/jobs/nope/curve", headers=admin).json()["error"]["code"] == "job_not_found"
    curve = client.get(f"/v1/jobs/{job['id']}/curve", headers=admin)
    assert curve.status_code == 200
    # The owner's read comes second: a running job's curve may have grown by then, never changed.
    mine = client.get(f"/v1/jobs/{job['id']}/curve", headers=train_headers).json()
    assert all(mine[k][:len(v)] == v for k, v in curve.json().items())


def test_job_routes_need_a_key_with_scope(client, make_key):
    optimize_only = {"Authorization": f"Bearer {make_key('optimize')}"}
    admin_only = {"Authorization": f"Bearer {make_key('admin')}"}
    assert client.post("/v1/jobs", json=tiny_spec("x")).status_code == 401
    assert client.get("/v1/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/v1/jobs", json=tiny_spec("x"), headers=optimize_only).status_code == 403
    assert client.get("/v1/jobs", headers=optimize_only).status_code == 403
    assert client.get("/v1/jobs", headers=admin_only).status_code == 200


def test_list_filters_by_state(client, train_headers):
    assert client.get("/v1/jobs", params={"state": "running"}, headers=train_headers).json() == []
    bad = client.get("/v1/jobs", params={"state": "sleeping"}, headers=train_headers)
    assert bad.status_code == 422 and "state" in bad.json()["error"]["message"]


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"name": "Not A Name"}, "body.name", "invalid optimizer name"),
    ({"name": None}, "body.name", ""),
    ({"family": {"name": "sudoku"}}, "body.family.name", "unknown task family 'sudoku'"),
    ({"family": {"name": "quadratic", "params": {"dim": 0}}}, "body.family.params", "dim must be in 1..10000"),
    ({"family": {"name": "quadratic", "params": {"size": 3}}}, "body.family.params", "'size'"),
    ({"training": {"horizon": 10, "unroll": 3}}, "body.training", "horizon must be a multiple of unroll"),
    ({"training": {"iterations": 0}}, "body.training.iterations", ""),
    ({"training": {"meta_lr": 2}}, "body.training.meta_lr", ""),
    ({"optimizer": {"preprocess": "whiten"}}, "body.optimizer.preprocess", ""),
    ({"optimizer": {"output_scale": 0}}, "body.optimizer.output_scale", "output_scale must be non-zero"),
    ({"optimizer": {"architecture": "feature_mlp", "memory_up_only": True}}, "body.optimizer",
     "memory_up_only applies to a feature_mlp with step_memory"),
    ({"evaluation": {"baselines": ["adam", "lion"]}}, "body.evaluation.baselines.1", ""),
    ({"evaluation": {"baselines": []}}, "body.evaluation.baselines", ""),
    ({"evaluation": {"lr_grid": [0.1, -1]}}, "body.evaluation.lr_grid", "positive and finite"),
    ({"trainig": {"iterations": 5}}, "body.trainig", "Extra inputs are not permitted"),
])
def test_invalid_specs_are_422_naming_the_field(client, train_headers, change, field, words):
    spec = {**tiny_spec("valid"), **change}
    if spec["name"] is None:
        del spec["name"]
    response = client.post("/v1/jobs", json=spec, headers=train_headers)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert f"{field}:" in error["message"] and words in error["message"]
    assert client.get("/v1/jobs", headers=train_headers).json() == []  # nothing was created


def test_the_shipped_general_recipe_runs_as_a_job(client, train_headers, workers):
    """general-mlp's recipe, read from the shipped checkpoint's config, is a spec the API accepts and runs; only
    the run's length is cut. The version it publishes carries the same architecture and meta-training settings."""
    shipped = Checkpoint.load(Path(__file__).resolve().parents[2] / "service" / "pretrained" / "general-mlp").config
    recipe = shipped.trained_on
    training = {k: v for k, v in recipe["settings"].items() if k != "device"}
    training.update(iterations=2, max_horizon=100, eval_every=1, eval_problems=2, resume_every=1)
    spec = tiny_spec("general-recipe", family={"name": recipe["family"], "params": recipe["params"]},
                     optimizer={"architecture": shipped.architecture, "hidden_size": shipped.hidden_size,
                                "num_layers": shipped.num_layers, "output_scale": shipped.output_scale,
                                **{k: getattr(shipped, k) for k in FEATURE_MLP_SWITCHES}},
                     training=training)
    spec["training"] = training
    job = submit(client, train_headers, spec)
    workers.start()
    done = wait_for_state(client, train_headers, job["id"], "succeeded", "failed", timeout=300)
    assert done["state"] == "succeeded", done["error"]
    data = client.get("/v1/optimizers/general-recipe/versions/1/checkpoint", headers=train_headers).content
    made = Checkpoint.from_bytes(data).config
    assert (made.architecture, made.hidden_size, made.num_layers, made.output_scale, made.time_horizon) == (
        shipped.architecture, shipped.hidden_size, shipped.num_layers, shipped.output_scale, 100)
    assert {k: getattr(made, k) for k in FEATURE_MLP_SWITCHES} == {k: getattr(shipped, k) for k in FEATURE_MLP_SWITCHES}
    assert made.trained_on["family"] == recipe["family"] and made.trained_on["params"] == recipe["params"]
    cut = {"iterations", "max_horizon", "eval_every", "eval_problems", "resume_every", "device"}
    assert {k: v for k, v in made.trained_on["settings"].items() if k not in cut} == {
        k: v for k, v in recipe["settings"].items() if k not in cut}
    assert made.trained_on["settings"]["meta_loss"] == recipe["settings"]["meta_loss"] == "log_rise"
