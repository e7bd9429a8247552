"""The registry as MLflow's: descriptions and tags on names and versions (set at upload, edited with a
merge patch by the name's creator or an admin), search by name and tag a page at a time, deleting whole
names. Through the real app, on both databases."""

from __future__ import annotations

import base64
import json

import pytest

from service.lopt.checkpoint import sha256_hex
from service.registry import repository

OCTET = {"Content-Type": "application/octet-stream"}
REPORT = {"family": "quadratic", "steps": 3, "curves": {"lstm": {"mean": [1.0, 0.5, 0.25], "std": [0, 0, 0]},
                                                        "adam": {"mean": [1.0, 0.7, 0.6], "std": [0, 0, 0]}},
          "final": {"lstm": 0.25, "adam": 0.6}}


def upload(client, headers, name: str, data: bytes):
    return client.post(f"/v1/optimizers/{name}/versions", content=data, headers={**headers, **OCTET})


def upload_json(client, headers, name: str, data: bytes, **fields):
    body = {"checkpoint": base64.b64encode(data).decode(), **fields}
    return client.post(f"/v1/optimizers/{name}/versions", json=body,
                       headers={**headers, "X-L2O-SHA256": sha256_hex(data)})


def test_an_upload_carries_description_tags_evaluation_and_the_names_metadata(client, admin_headers,
                                                                                make_checkpoint):
    data = make_checkpoint()
    created = upload_json(client, admin_headers, "lstm", data, description="first try\nwith notes",
                          tags={"stage": "dev", "team/owner": "ml"}, evaluation=REPORT,
                          optimizer={"description": "LSTMs for quadratics", "tags": {"family": "quadratic"}})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["description"] == "first try\nwith notes" and body["tags"] == {"stage": "dev", "team/owner": "ml"}
    assert body["evaluation"]["curves"]["lstm"]["mean"] == [1.0, 0.5, 0.25]
    assert body["evaluation"]["final"] == {"lstm": 0.25, "adam": 0.6}   # fields beyond the curves are kept
    assert body["sha256"] == sha256_hex(data)
    stored = client.get("/v1/optimizers/lstm/versions/1/checkpoint", headers=admin_headers).content
    assert stored == data
    name = client.get("/v1/optimizers/lstm", headers=admin_headers).json()
    assert (name["description"], name["tags"]) == ("LSTMs for quadratics", {"family": "quadratic"})
    assert name["versions"][0]["tags"] == {"stage": "dev", "team/owner": "ml"}
    raw = upload(client, admin_headers, "lstm", make_checkpoint(seed=1)).json()
    assert (raw["description"], raw["tags"], raw["evaluation"]) == (None, {}, None)


@pytest.mark.parametrize("fields, status, fragment", [
    ({"tags": {"bad key": "x"}}, 422, "invalid tag key 'bad key'"),
    ({"tags": {"stage": "a\nb"}}, 422, "tags.stage: at most 256 characters and no control characters"),
    ({"tags": {"stage": "x" * 257}}, 422, "tags.stage"),
    ({"tags": {f"k{i}": "v" for i in range(33)}}, 422, "at most 32 tags"),
    ({"description": "x" * 4001}, 422, "description: at most 4000 characters"),
    ({"description": "bell\x07"}, 422, "description: no control characters"),
    ({"evaluation": {"curves": {}}}, 422, "body.evaluation.curves"),
    ({"evaluation": {"curves": {"lstm": {"mean": "no"}}}}, 422, "body.evaluation.curves.lstm.mean"),
    ({"surprise": 1}, 422, "body.surprise"),
    ({"checkpoint": "***"}, 422, "body.checkpoint: not valid base64"),
    ({"optimizer": {"tags": {"x": "\u2028"}}}, 422, "tags.x"),
])
def test_bad_metadata_at_upload_is_a_422_naming_the_field_and_stores_nothing(client, admin_headers, make_checkpoint,
                                                                           fields, status, fragment):
    response = upload_json(client, admin_headers, "lstm", make_checkpoint(), **fields)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]["message"], response.json()
    assert client.get("/v1/optimizers", headers=admin_headers).json() == []


def test_patch_merges_descriptions_and_tags_on_names_and_versions(client, admin_headers, make_checkpoint):
    upload(client, admin_headers, "lstm", make_checkpoint())
    url = "/v1/optimizers/lstm"
    first = client.patch(url, json={"description": "d", "tags": {"a": "1", "b": "2"}}, headers=admin_headers)
    assert first.status_code == 200
    assert (first.json()["description"], first.json()["tags"]) == ("d", {"a": "1", "b": "2"})
    # A merge patch: a null tag is removed, a left-out field stays as it was.
    second = client.patch(url, json={"tags": {"a": None, "c": "3"}}, headers=admin_headers).json()
    assert (second["description"], second["tags"]) == ("d", {"b": "2", "c": "3"})
    cleared = client.patch(url, json={"description": None}, headers=admin_headers).json()
    assert (cleared["description"], cleared["tags"]) == (None, {"b": "2", "c": "3"})

    v = client.patch(f"{url}/versions/1", json={"description": "tuned", "tags": {"stage": "prod"}},
                     headers=admin_headers)
    assert v.status_code == 200 and (v.json()["description"], v.json()["tags"]) == ("tuned", {"stage": "prod"})
    assert client.get(f"{url}/versions/1", headers=admin_headers).json()["tags"] == {"stage": "prod"}


@pytest.mark.parametrize("url, body, status, code, fragment", [
    ("/v1/optimizers/lstm", {"tags": {"-x": "1"}}, 422, "validation_error", "invalid tag key '-x'"),
    ("/v1/optimizers/lstm", {"tags": {f"k{i}": "v" for i in range(32)}}, 422, "validation_error", "at most 32"),
    ("/v1/optimizers/lstm", {"description": "\x1b[31m"}, 422, "validation_error", "description"),
    ("/v1/optimizers/lstm", {"description": 5}, 422, "validation_error", "body.description"),
    ("/v1/optimizers/lstm", {"tags": ["a"]}, 422, "validation_error", "body.tags"),
    ("/v1/optimizers/lstm", {"colour": "red"}, 422, "validation_error", "body.colour"),
    ("/v1/optimizers/nope", {"description": "x"}, 404, "not_found", "no optimizer named 'nope'"),
    ("/v1/optimizers/lstm/versions/9", {"description": "x"}, 404, "not_found", "has no version 9"),
    ("/v1/optimizers/lstm/versions/1", {"tags": {"k": "\x00"}}, 422, "validation_error", "tags.k"),
])
def test_bad_patches_change_nothing(client, admin_headers, make_checkpoint, url, body, status, code, fragment):
    upload(client, admin_headers, "lstm", make_checkpoint())
    client.patch("/v1/optimizers/lstm", json={"tags": {"keep": "me"}}, headers=admin_headers)
    before = client.get("/v1/optimizers/lstm", headers=admin_headers).json()
    response = client.patch(url, json=body, headers=admin_headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and fragment in error["message"], error
    assert client.get("/v1/optimizers/lstm", headers=admin_headers).json() == before


def test_only_the_names_creator_or_an_admin_may_edit_it(app, client, admin_headers, make_key, make_checkpoint):
    upload(client, admin_headers, "shipped", make_checkpoint())      # an admin's upload: no key created it
    owner, other = make_key("train", name="owner"), make_key("train", name="other")
    reader = make_key("optimize", name="reader")
    # A name the owner's job created (the registry records the job's key as the name's creator).
    from service.registry import service as registry
    from service.registry.models import Job

    with app.state.db.session() as s:
        key_id = next(k.id for k in repository.list_keys(s) if k.name == "owner")
        job = Job(key_id=key_id, spec={"name": "mine"}, state="succeeded")
        s.add(job)
        s.flush()
        registry.register_version(s, "mine", make_checkpoint(), source="job", job_id=job.id)
        s.commit()

    def patch(key, name):
        return client.patch(f"/v1/optimizers/{name}", json={"description": "x"},
                            headers={"Authorization": f"Bearer {key}"})

    assert patch(owner, "mine").status_code == 200
    refused = patch(other, "mine")
    assert refused.status_code == 403 and "was not created by this key" in refused.json()["error"]["message"]
    assert patch(owner, "shipped").status_code == 403
    assert patch(reader, "mine").status_code == 403                  # no train scope at all
    assert client.get("/v1/optimizers/mine", headers=admin_headers).json()["description"] == "x"
    assert client.patch("/v1/optimizers/shipped", json={"description": "y"}, headers=admin_headers).status_code == 200


def test_search_by_name_and_tag_a_page_at_a_time(client, admin_headers, make_checkpoint):
    data = make_checkpoint()
    for name, tags in [("quad-a", {"family": "quadratic", "stage": "prod"}), ("quad_b", {"family": "quadratic"}),
                       ("mlp-a", {"family": "mlp", "stage": "prod"}), ("quadxb", {})]:
        upload(client, admin_headers, name, data)
        client.patch(f"/v1/optimizers/{name}", json={"tags": tags}, headers=admin_headers)

    def search(**params):
        response = client.get("/v1/optimizers", params=params, headers=admin_headers)
        assert response.status_code == 200, response.text
        return [o["name"] for o in response.json()]

    assert search() == ["mlp-a", "quad-a", "quad_b", "quadxb"]
    assert search(q="quad") == ["quad-a", "quad_b", "quadxb"]
    assert search(q="quad_") == ["quad_b"]                 # '_' is a character here, not LIKE's wildcard
    assert search(tag="family:quadratic") == ["quad-a", "quad_b"]
    assert search(tag=["family:quadratic", "stage:prod"]) == ["quad-a"]
    assert search(tag="stage") == ["mlp-a", "quad-a"]      # a key alone: any value
    assert search(q="mlp", tag="family:quadratic") == []

    first = client.get("/v1/optimizers", params={"limit": 2, "q": "a"}, headers=admin_headers)
    assert [o["name"] for o in first.json()] == ["mlp-a", "quad-a"]
    following = first.links["next"]["url"]
    second = client.get(following, headers=admin_headers)
    assert [o["name"] for o in second.json()] == ["quad_b", "quadxb"]
    assert "next" in second.links                           # a full page: there may be more
    assert client.get(second.links["next"]["url"], headers=admin_headers).json() == []

    for params, fragment in [({"tag": "bad key:x"}, "invalid tag key"), ({"q": "UPPER"}, "query.q"),
                             ({"limit": 0}, "query.limit"), ({"after": "Not A Name"}, "query.after"),
                             ({"tag": "k:\x01"}, "tag.k")]:
        bad = client.get("/v1/optimizers", params=params, headers=admin_headers)
        assert bad.status_code == 422 and fragment in bad.json()["error"]["message"], (params, bad.text)


def test_deleting_a_whole_name(app, client, admin_headers, make_key, make_checkpoint):
    for seed in range(2):
        upload(client, admin_headers, "lstm", make_checkpoint(seed=seed))
    client.put("/v1/optimizers/lstm/aliases/prod", json={"version": 2}, headers=admin_headers)
    client.patch("/v1/optimizers/lstm", json={"tags": {"a": "b"}}, headers=admin_headers)
    client.patch("/v1/optimizers/lstm/versions/1", json={"tags": {"c": "d"}}, headers=admin_headers)
    trainer = {"Authorization": f"Bearer {make_key('train', 'optimize')}"}
    assert client.delete("/v1/optimizers/lstm", headers=trainer).status_code == 403

    in_use = set()
    app.state.is_version_in_use = lambda version_id: version_id in in_use
    with app.state.db.session() as s:
        in_use.add(repository.get_version(s, "lstm", 1).id)
    refused = client.delete("/v1/optimizers/lstm", headers=admin_headers)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "version_in_use"
    assert refused.json()["error"]["detail"]["versions"] == [1]
    assert client.get("/v1/optimizers/lstm", headers=admin_headers).json()["version_count"] == 2

    in_use.clear()
    assert client.delete("/v1/optimizers/lstm", headers=admin_headers).status_code == 204
    assert client.get("/v1/optimizers/lstm", headers=admin_headers).status_code == 404
    assert client.get("/v1/optimizers/resolve", params={"ref": "lstm@prod"}, headers=admin_headers).status_code == 404
    assert client.delete("/v1/optimizers/lstm", headers=admin_headers).status_code == 404
    # Nothing of it is left: the name starts afresh, without its old tags.
    again = upload(client, admin_headers, "lstm", make_checkpoint()).json()
    assert (again["version"], again["tags"]) == (1, {})
    assert client.get("/v1/optimizers/lstm", headers=admin_headers).json()["tags"] == {}


def test_deleting_the_version_an_alias_points_to_removes_the_alias(client, admin_headers, make_checkpoint):
    for seed in range(2):
        upload(client, admin_headers, "lstm", make_checkpoint(seed=seed))
    client.put("/v1/optimizers/lstm/aliases/prod", json={"version": 2}, headers=admin_headers)
    assert client.delete("/v1/optimizers/lstm/versions/2", headers=admin_headers).status_code == 204

    def resolve(ref):
        return client.get("/v1/optimizers/resolve", params={"ref": ref}, headers=admin_headers)

    gone = resolve("lstm@prod")
    assert gone.status_code == 404 and "no alias 'prod'" in gone.json()["error"]["message"]
    assert resolve("lstm@latest").json()["version"] == 1     # latest: the newest version left


def test_tags_survive_as_rows_only_while_their_owner_does(app, client, admin_headers, make_checkpoint):
    upload(client, admin_headers, "lstm", make_checkpoint())
    client.patch("/v1/optimizers/lstm/versions/1", json={"tags": {"x": "y"}}, headers=admin_headers)
    assert client.delete("/v1/optimizers/lstm/versions/1", headers=admin_headers).status_code == 204
    from sqlalchemy import func, select

    from service.registry.models import VersionTag

    with app.state.db.session() as s:
        assert s.scalar(select(func.count()).select_from(VersionTag)) == 0
    assert json.loads(json.dumps(client.get("/v1/optimizers/lstm", headers=admin_headers).json()))["versions"] == []
