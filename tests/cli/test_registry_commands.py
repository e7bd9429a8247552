"""`l2o optimizers` search, describe, tag, evaluate and delete --all-versions, and an upload of a
`l2o train --out` folder that carries its evaluation.json, against the real app."""

from __future__ import annotations

import json

import pytest

from client import Client
from service.lopt import Checkpoint
from tests.cli.test_client_commands import SQLITE, cli
from tests.conftest import checkpoint_bytes

REPORT = {"family": "quadratic", "steps": 2, "curves": {"lstm": {"mean": [1.0, 0.5, 0.2], "std": [0, 0, 0]}}}


@pytest.fixture
def sdk(client, admin_key) -> Client:
    return Client(str(client.base_url), api_key=admin_key, http_client=client)


@SQLITE
def test_upload_describe_tag_search_evaluate_delete(sdk, tmp_path, capsys):
    folder = Checkpoint.from_bytes(checkpoint_bytes(seed=1)).save(tmp_path / "run")   # as `l2o train --out` writes
    (folder / "evaluation.json").write_text(json.dumps(REPORT))
    assert cli(["optimizers", "upload", "quad-a", str(folder), "--description", "first", "--tag", "stage=dev",
                "--json"], sdk) == 0
    version = json.loads(capsys.readouterr().out)
    assert version["evaluation"] == REPORT and version["tags"] == {"stage": "dev"}
    assert version["description"] == "first"
    assert cli(["optimizers", "upload", "quad-b", str(folder), "--no-evaluation"], sdk) == 0
    assert "with its evaluation" not in capsys.readouterr().out
    assert sdk.optimizers.version("quad-b", 1).evaluation is None

    assert cli(["optimizers", "describe", "quad-a", "LSTMs on quadratics"], sdk) == 0
    assert cli(["optimizers", "tag", "quad-a", "family=quadratic", "owner=me"], sdk) == 0
    assert "tags family=quadratic,owner=me" in capsys.readouterr().out
    assert cli(["optimizers", "tag", "quad-a:1", "--delete", "stage", "--json"], sdk) == 0
    assert json.loads(capsys.readouterr().out)["tags"] == {}
    assert cli(["optimizers", "tag", "quad-a", "bad key=x"], sdk) == 1           # the server's 422
    assert "invalid tag key" in capsys.readouterr().err
    assert cli(["optimizers", "tag", "quad-a"], sdk) == 2
    assert cli(["optimizers", "describe", "quad-a"], sdk) == 2
    capsys.readouterr()

    assert cli(["optimizers", "search", "quad", "--tag", "family:quadratic"], sdk) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split() == ["NAME", "LATEST", "VERSIONS", "TAGS", "DESCRIPTION"]
    assert rows[1].split()[:4] == ["quad-a", "1", "1", "family=quadratic,owner=me"] and len(rows) == 2
    assert cli(["optimizers", "search", "--tag", "owner", "--json"], sdk) == 0
    assert [o["name"] for o in json.loads(capsys.readouterr().out)] == ["quad-a"]
    assert cli(["optimizers", "show", "quad-a"], sdk) == 0
    assert "LSTMs on quadratics" in capsys.readouterr().out

    assert cli(["optimizers", "evaluate", "quad-a:1", "--family", "quadratic", "--param", "dim=3",
                "--set", "steps=3", "--set", "instances=2", "--set", "tune_instances=2",
                "--set", 'baselines=["adam"]', "--set", "lr_grid=[0.1]", "--json"], sdk) == 0
    job = json.loads(capsys.readouterr().out)
    assert (job["kind"], job["spec"]["evaluation"]["steps"]) == ("evaluate", 3)
    assert sdk.jobs.wait(job["id"]).state == "succeeded"
    assert set(sdk.optimizers.version("quad-a", 1).evaluation["curves"]) == {"lstm", "adam"}
    assert cli(["optimizers", "evaluate", "quad-a"], sdk) == 2

    assert cli(["optimizers", "delete", "quad-b"], sdk) == 2                    # a whole name needs the flag
    assert cli(["optimizers", "delete", "quad-b:1", "--all-versions"], sdk) == 2
    assert cli(["optimizers", "delete", "quad-b", "--all-versions"], sdk) == 0
    assert cli(["optimizers", "show", "quad-b"], sdk) == 3
