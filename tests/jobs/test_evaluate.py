"""Evaluation on demand: POST /v1/optimizers/{name}/versions/{n}/evaluate queues a job (kind `evaluate`)
that runs through the same executors as training and attaches its report to the version. On both
executors; and a training job publishes the description and tags its spec gives."""

from __future__ import annotations

from service.registry import service as registry
from tests.conftest import checkpoint_bytes
from tests.jobs.conftest import tiny_spec, wait_for_state

SMALL = {"instances": 3, "steps": 5, "tune_instances": 2, "lr_grid": [0.01, 0.1], "baselines": ["sgd", "adam"]}
TRAINED_ON = {"family": "quadratic", "params": {"dim": 3}}


def evaluate(client, headers, ref: str, body=None):
    name, _, number = ref.partition(":")
    return client.post(f"/v1/optimizers/{name}/versions/{number}/evaluate", json=body, headers=headers)


def test_an_evaluation_job_attaches_its_report_to_the_version(client, app, make_key, workers):
    admin = {"Authorization": f"Bearer {make_key('train', 'admin', name='admin')}"}
    mallory = {"Authorization": f"Bearer {make_key('train', name='mallory')}"}
    with app.state.db.session() as s:
        registry.register_version(s, "uploaded", checkpoint_bytes(trained_on=TRAINED_ON), source="upload")
        registry.register_version(s, "uploaded", checkpoint_bytes(seed=1, trained_on=TRAINED_ON), source="upload")
        registry.register_version(s, "anonymous", checkpoint_bytes(), source="upload")   # says no family
        s.commit()

    # Refusals change nothing and queue nothing.
    for headers, ref, body, status, fragment in [
        (mallory, "uploaded:1", None, 403, "was not created by this key"),
        (admin, "uploaded:9", None, 404, "has no version 9"),
        (admin, "nope:1", None, 404, "no optimizer named 'nope'"),
        (admin, "anonymous:1", None, 422, "body.family"),
        (admin, "uploaded:1", {"evaluation": {"instances": 0}}, 422, "body.evaluation.instances"),
        (admin, "uploaded:1", {"evaluation": {"steps": 5}, "extra": 1}, 422, "body.extra"),
        (admin, "uploaded:1", {"family": {"name": "sudoku"}}, 422, "body.family.name"),
    ]:
        refused = evaluate(client, headers, ref, body)
        assert refused.status_code == status, (ref, refused.text)
        assert fragment in refused.json()["error"]["message"], refused.json()
    assert client.get("/v1/jobs", headers=admin).json() == []

    queued = evaluate(client, admin, "uploaded:1", {"evaluation": SMALL})
    assert queued.status_code == 202, queued.text
    job = queued.json()
    assert queued.headers["location"] == f"/v1/jobs/{job['id']}"
    assert (job["kind"], job["name"], job["state"]) == ("evaluate", "uploaded", "queued")
    assert job["spec"]["family"] == {"name": "quadratic", "params": {"dim": 3, "init_std": 0.01}}  # trained on
    # A job whose version is deleted before it runs fails saying so, and attaches nothing.
    doomed = evaluate(client, admin, "uploaded:2", {"evaluation": SMALL}).json()
    assert client.delete("/v1/optimizers/uploaded/versions/2", headers=admin).status_code == 204
    workers.start()

    done = wait_for_state(client, admin, job["id"], "succeeded", "failed", "cancelled")
    assert done["state"] == "succeeded", done["error"]
    assert done["result"] == {"name": "uploaded", "version": 1, "reference": "uploaded:1"}
    report = client.get("/v1/optimizers/uploaded/versions/1", headers=admin).json()["evaluation"]
    assert set(report["curves"]) == {"lstm", "sgd", "adam"} and report["steps"] == 5
    assert report["family"] == "quadratic" and report["family_params"]["dim"] == 3
    assert all(len(c["mean"]) == 6 for c in report["curves"].values())

    failed = wait_for_state(client, admin, doomed["id"], "succeeded", "failed", "cancelled")
    assert failed["state"] == "failed" and "uploaded:2 was deleted" in failed["error"]


def test_a_job_publishes_the_description_and_tags_of_its_spec_and_may_evaluate_its_own_name(
        client, make_key, workers):
    alice = {"Authorization": f"Bearer {make_key('train', name='alice')}"}
    spec = tiny_spec("alices", training={"iterations": 2, "eval_every": 1})
    bad = client.post("/v1/jobs", json={**spec, "tags": {"bad key": "x"}}, headers=alice)
    assert bad.status_code == 422 and "body.tags" in bad.json()["error"]["message"]
    job = client.post("/v1/jobs", json={**spec, "description": "a tiny one", "tags": {"stage": "dev"}},
                      headers=alice).json()
    workers.start()
    assert wait_for_state(client, alice, job["id"], "succeeded", "failed")["state"] == "succeeded"
    version = client.get("/v1/optimizers/alices/versions/1", headers=alice).json()
    assert (version["description"], version["tags"]) == ("a tiny one", {"stage": "dev"})

    # Alice's key created the name: it may evaluate it again (here on another family's size) and edit it.
    again = evaluate(client, alice, "alices:1", {"family": {"name": "quadratic", "params": {"dim": 4}},
                                                 "evaluation": SMALL})
    assert again.status_code == 202, again.text
    assert wait_for_state(client, alice, again.json()["id"], "succeeded", "failed")["state"] == "succeeded"
    report = client.get("/v1/optimizers/alices/versions/1", headers=alice).json()["evaluation"]
    assert report["family_params"]["dim"] == 4 and report["steps"] == 5
    patched = client.patch("/v1/optimizers/alices", json={"tags": {"owner": "alice"}}, headers=alice)
    assert patched.status_code == 200 and patched.json()["tags"] == {"owner": "alice"}
