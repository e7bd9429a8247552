"""The registry over HTTP, through the real app, on both databases."""

from __future__ import annotations

import json

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from service.lopt import Checkpoint, OptimizerConfig
from service.lopt.checkpoint import sha256_hex
from service.registry import repository

OCTET = {"Content-Type": "application/octet-stream"}


def upload(client, headers, name: str, data: bytes, **extra):
    return client.post(f"/v1/optimizers/{name}/versions", content=data, headers={**headers, **OCTET, **extra})


def names(client, headers) -> list[str]:
    return [o["name"] for o in client.get("/v1/optimizers", headers=headers).json()]


def test_upload_list_get_download(client, admin_headers, make_checkpoint):
    data = make_checkpoint()
    created = upload(client, admin_headers, "lstm", data, **{"X-L2O-SHA256": sha256_hex(data)})
    assert created.status_code == 201, created.text
    body = created.json()
    assert created.headers["location"] == "/v1/optimizers/lstm/versions/1"
    assert (body["name"], body["version"], body["reference"]) == ("lstm", 1, "lstm:1")
    assert body["sha256"] == sha256_hex(data) and body["size"] == len(data) and body["source"] == "upload"
    assert body["config"] == OptimizerConfig(hidden_size=4, num_layers=1).to_dict()
    assert body["job_id"] is None and body["evaluation"] is None and body["created_at"].endswith("Z")

    second = upload(client, admin_headers, "lstm", make_checkpoint(seed=1)).json()
    assert second["version"] == 2
    listed = client.get("/v1/optimizers", headers=admin_headers).json()
    assert [(o["name"], o["latest_version"], o["version_count"]) for o in listed] == [("lstm", 2, 2)]
    detail = client.get("/v1/optimizers/lstm", headers=admin_headers).json()
    assert [v["version"] for v in detail["versions"]] == [1, 2] and detail["aliases"] == {}
    assert client.get("/v1/optimizers/lstm/versions/2", headers=admin_headers).json() == second

    download = client.get("/v1/optimizers/lstm/versions/1/checkpoint", headers=admin_headers)
    assert download.status_code == 200 and download.content == data
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.headers["x-l2o-sha256"] == sha256_hex(data)
    assert download.headers["etag"] == f'"{sha256_hex(data)}"'


def test_references_and_aliases(client, admin_headers, make_checkpoint):
    for seed in range(3):
        upload(client, admin_headers, "lstm", make_checkpoint(seed=seed))

    def resolve(ref):
        return client.get("/v1/optimizers/resolve", params={"ref": ref}, headers=admin_headers)

    put = client.put("/v1/optimizers/lstm/aliases/prod", json={"version": 1}, headers=admin_headers)
    assert put.status_code == 200
    assert {k: put.json()[k] for k in ("name", "alias", "version", "reference")} == {
        "name": "lstm", "alias": "prod", "version": 1, "reference": "lstm@prod"}
    assert resolve("lstm@prod").json()["version"] == 1
    assert resolve("lstm").json()["version"] == 3
    assert resolve("lstm:2").json()["version"] == 2

    client.put("/v1/optimizers/lstm/aliases/prod", json={"version": 3}, headers=admin_headers)
    assert resolve("lstm@prod").json()["version"] == 3
    assert client.get("/v1/optimizers/lstm", headers=admin_headers).json()["aliases"] == {"prod": 3}
    assert client.get("/v1/optimizers/lstm/versions/3", headers=admin_headers).json()["aliases"] == ["prod"]

    assert client.delete("/v1/optimizers/lstm/aliases/prod", headers=admin_headers).status_code == 204
    missing = resolve("lstm@prod")
    assert missing.status_code == 404 and "no alias 'prod'" in missing.json()["error"]["message"]


@pytest.mark.parametrize("method, url, body, status, code, fragment", [
    ("GET", "/v1/optimizers/nope", None, 404, "not_found", "no optimizer named 'nope'"),
    ("GET", "/v1/optimizers/lstm/versions/9", None, 404, "not_found", "has no version 9"),
    ("GET", "/v1/optimizers/lstm/versions/0", None, 422, "validation_error", "path.version"),
    ("GET", "/v1/optimizers/lstm/versions/one", None, 422, "validation_error", "path.version"),
    ("GET", "/v1/optimizers/lstm/versions/9/checkpoint", None, 404, "not_found", "has no version 9"),
    ("GET", "/v1/optimizers/BAD", None, 422, "invalid_name", "invalid optimizer name 'BAD'"),
    ("GET", "/v1/optimizers/resolve?ref=lstm:x", None, 422, "invalid_reference", "integer >= 1"),
    ("GET", "/v1/optimizers/resolve", None, 422, "validation_error", "query.ref"),
    ("PUT", "/v1/optimizers/lstm/aliases/prod", {"version": 9}, 404, "not_found", "has no version 9"),
    ("PUT", "/v1/optimizers/lstm/aliases/prod", {"version": "x"}, 422, "validation_error", "body.version"),
    ("PUT", "/v1/optimizers/lstm/aliases/prod", {}, 422, "validation_error", "body.version"),
    ("PUT", "/v1/optimizers/lstm/aliases/9lives", {"version": 1}, 422, "invalid_name", "invalid alias"),
    ("PUT", "/v1/optimizers/nope/aliases/prod", {"version": 1}, 404, "not_found", "no optimizer named 'nope'"),
    ("DELETE", "/v1/optimizers/lstm/aliases/prod", None, 404, "not_found", "no alias 'prod'"),
    ("DELETE", "/v1/optimizers/lstm/versions/9", None, 404, "not_found", "has no version 9"),
])
def test_bad_requests_get_a_clear_4xx_and_change_nothing(client, admin_headers, make_checkpoint,
                                                         method, url, body, status, code, fragment):
    upload(client, admin_headers, "lstm", make_checkpoint())
    before = client.get("/v1/optimizers/lstm", headers=admin_headers).json()
    response = client.request(method, url, json=body, headers=admin_headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and fragment in error["message"], error
    assert client.get("/v1/optimizers/lstm", headers=admin_headers).json() == before


def arch_mismatch(make_checkpoint) -> bytes:
    claims = json.dumps(OptimizerConfig(hidden_size=8, num_layers=1).to_dict())
    return st_save(st_load(make_checkpoint(hidden_size=4)), metadata={"format": "l2o-lstm/1", "config": claims})


def blows_up(make_checkpoint) -> bytes:
    weights = st_load(make_checkpoint())
    weights["head.weight"] = torch.full_like(weights["head.weight"], 3e38)
    weights["head.bias"] = torch.full_like(weights["head.bias"], 3e38)
    return Checkpoint(OptimizerConfig(hidden_size=4, num_layers=1, output_scale=1e5), weights).to_bytes()


@pytest.mark.parametrize("case, status, code, fragment", [
    ("corrupt", 422, "invalid_checkpoint", "not a valid safetensors file"),
    ("empty", 422, "invalid_checkpoint", "not a valid safetensors file"),
    ("digest", 400, "digest_mismatch", "was declared"),
    ("architecture", 422, "invalid_checkpoint", "config implies"),
    ("unknown-architecture", 422, "invalid_checkpoint", "architecture must be one of"),
    ("lstm-field-on-feature-mlp", 422, "invalid_checkpoint", "preprocess applies to the lstm architecture only"),
    ("non-finite", 422, "invalid_checkpoint", "non-finite updates"),
    ("oversize", 413, "payload_too_large", "L2O_MAX_UPLOAD_BYTES"),
    ("oversize-streamed", 413, "payload_too_large", "L2O_MAX_UPLOAD_BYTES"),
    ("content-type", 415, "unsupported_media_type", "application/octet-stream"),
    ("config-header", 400, "bad_request", "X-L2O-Config is not valid JSON"),
    ("name", 422, "invalid_name", "invalid optimizer name"),
])
def test_bad_uploads_are_refused_and_nothing_is_written(client, admin_headers, make_checkpoint,
                                                        case, status, code, fragment):
    good = make_checkpoint()
    name, data, extra = "fresh", good, {}
    if case == "corrupt":
        data = b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}" + good[40:]
    elif case == "empty":
        data = b""
    elif case == "digest":
        extra = {"X-L2O-SHA256": sha256_hex(good[:-1])}
    elif case == "architecture":
        data = arch_mismatch(make_checkpoint)
    elif case in ("unknown-architecture", "lstm-field-on-feature-mlp"):
        claims = {"unknown-architecture": {"architecture": "transformer"},
                  "lstm-field-on-feature-mlp": {"architecture": "feature_mlp", "preprocess": "none"}}[case]
        data = st_save(st_load(good), metadata={"format": "l2o-lstm/1", "config": json.dumps(claims)})
    elif case == "non-finite":
        data = blows_up(make_checkpoint)
    elif case == "oversize":
        data = good + b"\x00" * 1_000_000
    elif case == "content-type":
        extra = {"Content-Type": "multipart/form-data; boundary=x"}
    elif case == "config-header":
        extra = {"X-L2O-Config": "{nope"}
    elif case == "name":
        name = "Fresh Name"
    if case == "oversize-streamed":  # no Content-Length: the limit is enforced while reading
        response = client.post(f"/v1/optimizers/{name}/versions", headers={**admin_headers, **OCTET},
                               content=iter([good, b"\x00" * 600_000, b"\x00" * 600_000]))
    else:
        response = upload(client, admin_headers, name, data, **extra)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and fragment in error["message"], error
    assert names(client, admin_headers) == []


def test_a_bare_safetensors_upload_takes_its_config_from_a_header(client, admin_headers, make_checkpoint):
    cfg = OptimizerConfig(hidden_size=4, num_layers=1)
    bare = st_save(st_load(make_checkpoint()))
    assert upload(client, admin_headers, "bare", bare).status_code == 422
    response = upload(client, admin_headers, "bare", bare, **{"X-L2O-Config": json.dumps(cfg.to_dict())})
    assert response.status_code == 201, response.text
    stored = client.get("/v1/optimizers/bare/versions/1/checkpoint", headers=admin_headers).content
    assert Checkpoint.from_bytes(stored).config == cfg and response.json()["sha256"] == sha256_hex(stored)


def test_a_failure_mid_write_leaves_nothing_behind(app, admin_headers, make_checkpoint, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("disk on fire")

    # The optimizer row is already inserted when storing the version fails.
    monkeypatch.setattr(repository, "add_version", fail)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = upload(client, admin_headers, "fresh", make_checkpoint())
        assert response.status_code == 500
        assert response.json() == {"error": {"code": "internal_error", "message": "internal server error",
                                             "detail": None}}
        assert names(client, admin_headers) == []


def test_deleting_versions(app, client, admin_headers, make_checkpoint):
    for seed in range(2):
        upload(client, admin_headers, "lstm", make_checkpoint(seed=seed))
    client.put("/v1/optimizers/lstm/aliases/prod", json={"version": 2}, headers=admin_headers)
    in_use = set()
    app.state.is_version_in_use = lambda version_id: version_id in in_use
    with app.state.db.session() as s:
        in_use.add(repository.get_version(s, "lstm", 2).id)

    refused = client.delete("/v1/optimizers/lstm/versions/2", headers=admin_headers)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "version_in_use"
    assert "lstm:2 is in use" in refused.json()["error"]["message"]
    assert client.get("/v1/optimizers/lstm/versions/2", headers=admin_headers).status_code == 200

    in_use.clear()
    assert client.delete("/v1/optimizers/lstm/versions/2", headers=admin_headers).status_code == 204
    assert client.get("/v1/optimizers/lstm/versions/2", headers=admin_headers).status_code == 404
    detail = client.get("/v1/optimizers/lstm", headers=admin_headers).json()
    assert [v["version"] for v in detail["versions"]] == [1] and detail["aliases"] == {}
    assert upload(client, admin_headers, "lstm", make_checkpoint(seed=5)).json()["version"] == 3
