"""`l2o jobs ...` against the real app (the CLI's SDK client sends through the test client) and its failure
modes."""

from __future__ import annotations

import argparse
import json

import pytest

from client import Client
from service.cli import build_parser, main
from service.cli.jobs import CliError, build_spec
from tests.jobs.conftest import tiny_spec


def cli(argv: list[str], http, headers) -> int:
    args = build_parser().parse_args(argv)
    key = headers["Authorization"].removeprefix("Bearer ")
    return args.func(args, client=Client(str(http.base_url), api_key=key, http_client=http))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the CLI only speaks HTTP: one backend will do
def test_submit_watch_list_show_cancel(client, train_headers, tmp_path, capsys):
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(tiny_spec("placeholder")))
    code = cli(["jobs", "submit", "--spec", str(spec), "--name", "from-cli", "--set", "training.iterations=4",
                "--watch"], client, train_headers)
    out = capsys.readouterr()
    assert code == 0, out.err
    job_id = out.out.splitlines()[0]
    assert "succeeded: from-cli:1" in out.out
    assert "4/4" in out.err and "[" + "#" * 30 + "]" in out.err  # the progress bar reached the end

    assert cli(["jobs", "list"], client, train_headers) == 0
    listed = capsys.readouterr().out
    assert job_id in listed and "succeeded" in listed and "from-cli:1" in listed

    assert cli(["jobs", "show", job_id, "--json"], client, train_headers) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "succeeded" and shown["spec"]["training"]["iterations"] == 4

    assert cli(["jobs", "cancel", job_id], client, train_headers) == 1
    assert "already succeeded" in capsys.readouterr().err
    assert cli(["jobs", "watch", "no-such-job"], client, train_headers) == 3  # not found
    assert "no job 'no-such-job' (HTTP 404)" in capsys.readouterr().err


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_submit_refused_spec_says_why(client, train_headers, capsys):
    assert cli(["jobs", "submit", "--name", "x", "--set", "training.unroll=7"], client, train_headers) == 1
    assert "body.training: Value error, horizon must be a multiple of unroll (HTTP 422)" in capsys.readouterr().err


def test_build_spec_merges_file_and_options(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"name": "a", "training": {"iterations": 5, "seed": 3}}))
    args = argparse.Namespace(spec=str(path), name="b", family="mlp", param=["hidden_sizes=[40]", "activation=relu"],
                              fields=["training.iterations=9", "evaluation.baselines=[\"adam\"]"])
    assert build_spec(args) == {
        "name": "b", "training": {"iterations": 9, "seed": 3}, "evaluation": {"baselines": ["adam"]},
        "family": {"name": "mlp", "params": {"hidden_sizes": [40], "activation": "relu"}}}
    with pytest.raises(CliError, match="needs a name"):
        build_spec(argparse.Namespace(spec=None, name=None, family=None, param=None, fields=None))
    with pytest.raises(CliError, match="expected key=value"):
        build_spec(argparse.Namespace(spec=None, name="a", family=None, param=None, fields=["training"]))
    with pytest.raises(CliError, match="cannot read the spec"):
        build_spec(argparse.Namespace(spec=str(tmp_path / "missing.json"), name="a", family=None, param=None,
                                      fields=None))


def test_no_key_and_no_server_are_one_line_errors(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("L2O_API_KEY", raising=False)
    monkeypatch.setenv("L2O_DATA_DIR", str(tmp_path))
    assert main(["jobs", "list"]) == 4  # authentication
    err = capsys.readouterr().err
    assert err.startswith("error: no API key") and "set L2O_API_KEY" in err and "start the embedded server once" in err
    (tmp_path / "admin.key").write_text("l2o_from_file\n")
    monkeypatch.setenv("L2O_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    assert main(["jobs", "list"]) == 5  # server unreachable
    assert "cannot reach the l2o server" in capsys.readouterr().err
