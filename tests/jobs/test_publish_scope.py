"""Registry writes follow scopes: a job may publish a new name or a name its own key created; anything else
needs the admin scope. Checked at submission (403, nothing created) and again when publishing, where a
name another key created meanwhile fails the job."""

from __future__ import annotations

from service.registry import service as registry
from tests.conftest import checkpoint_bytes
from tests.jobs.conftest import tiny_spec, wait_for_state
from tests.record import record

QUICK = {"training": {"iterations": 2, "eval_every": 1}}


def submit(client, headers, name: str, **sections):
    return client.post("/v1/jobs", json=tiny_spec(name, **{**QUICK, **sections}), headers=headers)


def finished(client, headers, job_id):
    return wait_for_state(client, headers, job_id, "succeeded", "failed", "cancelled")


def test_a_train_key_publishes_only_new_names_or_its_own(client, app, make_key, workers):
    alice = {"Authorization": f"Bearer {make_key('train', name='alice')}"}
    mallory = {"Authorization": f"Bearer {make_key('train', name='mallory')}"}
    admin = {"Authorization": f"Bearer {make_key('train', 'admin', name='admin')}"}
    with app.state.db.session() as s:  # a shipped optimizer, as `quadratic-lstm` is
        registry.register_version(s, "quadratic-lstm", checkpoint_bytes(), source="pretrained")
        s.commit()
    workers.start()

    first = submit(client, alice, "alices").json()
    assert finished(client, alice, first["id"])["result"]["reference"] == "alices:1"
    again = submit(client, alice, "alices").json()  # its own name: the next version
    assert finished(client, alice, again["id"])["result"]["reference"] == "alices:2"

    # The attack: another train key publishing a name it did not create, with an output scale of -50.
    statuses = []
    for name in ("quadratic-lstm", "alices"):
        refused = submit(client, mallory, name, optimizer={"output_scale": -50.0})
        assert refused.status_code == 403, refused.text
        error = refused.json()["error"]
        assert error["code"] == "forbidden" and "'admin' scope" in error["message"] and name in error["message"]
        statuses.append(refused.status_code)
    assert client.get("/v1/jobs", headers=mallory).json() == []  # nothing was created
    latest = client.get("/v1/optimizers/quadratic-lstm", headers=alice).json()
    assert [v["version"] for v in latest["versions"]] == [1]
    record("jobs:publish_scope", statuses=statuses, jobs_created=0, shipped_versions=len(latest["versions"]))

    # An admin key may publish anywhere.
    by_admin = submit(client, admin, "alices").json()
    assert finished(client, admin, by_admin["id"])["result"]["reference"] == "alices:3"


def test_a_name_taken_while_the_job_waited_fails_it_at_publishing(client, make_key, workers):
    alice = {"Authorization": f"Bearer {make_key('train', name='alice')}"}
    bob = {"Authorization": f"Bearer {make_key('train', name='bob')}"}
    # Both are new names when submitted; jobs run in order, so Alice's publishes first.
    alices = submit(client, alice, "contested").json()
    bobs = submit(client, bob, "contested").json()
    assert bobs["state"] == "queued"
    workers.start()
    assert finished(client, alice, alices["id"])["state"] == "succeeded"
    lost = finished(client, bob, bobs["id"])
    assert lost["state"] == "failed" and lost["result"] is None
    assert "was not created by this key" in lost["error"] and "'admin' scope" in lost["error"]
    versions = client.get("/v1/optimizers/contested", headers=alice).json()["versions"]
    assert [v["version"] for v in versions] == [1]
