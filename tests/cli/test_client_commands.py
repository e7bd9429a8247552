"""`l2o optimizers`, `l2o sessions` and `l2o jobs list` against the real app (the CLI's SDK client sends
through the test client), their --json output, and the exit status of each kind of failure."""

from __future__ import annotations

import json

import pytest

from client import Client
from service.cli import build_parser, main
from service.lopt import Checkpoint
from tests.conftest import checkpoint_bytes

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the CLI only speaks HTTP


def cli(argv: list[str], sdk: Client) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args, client=sdk)


@pytest.fixture
def sdk(client, admin_key) -> Client:
    return Client(str(client.base_url), api_key=admin_key, http_client=client)


@SQLITE
def test_optimizers_upload_list_show_download_alias_delete(sdk, tmp_path, capsys):
    folder = Checkpoint.from_bytes(checkpoint_bytes(seed=1)).save(tmp_path / "run")   # as `l2o train --out` writes
    file = tmp_path / "two.safetensors"
    file.write_bytes(checkpoint_bytes(seed=2))
    assert cli(["optimizers", "upload", "mine", str(folder), "--alias", "prod"], sdk) == 0
    assert cli(["optimizers", "upload", "mine", str(file)], sdk) == 0
    assert "registered mine:2" in capsys.readouterr().out

    assert cli(["optimizers", "list"], sdk) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["NAME", "LATEST", "VERSIONS", "ALIASES", "CREATED"]
    assert table[1].split()[:4] == ["mine", "2", "2", "prod->1"]
    assert cli(["optimizers", "list", "--json"], sdk) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(o["name"], o["latest_version"]) for o in listed] == [("mine", 2)]

    assert cli(["optimizers", "show", "mine"], sdk) == 0
    shown = capsys.readouterr().out
    assert "mine:1" in shown and "mine:2" in shown and "prod" in shown
    assert cli(["optimizers", "show", "mine@prod", "--json"], sdk) == 0
    version = json.loads(capsys.readouterr().out)
    assert version["reference"] == "mine:1" and version["config"]["hidden_size"] == 4

    out = tmp_path / "down.safetensors"
    assert cli(["optimizers", "download", "mine@prod", "--out", str(out)], sdk) == 0
    assert out.read_bytes() == (folder / "weights.safetensors").read_bytes()

    assert cli(["optimizers", "alias", "mine", "prod", "2"], sdk) == 0
    assert "mine@prod -> mine:2" in capsys.readouterr().out
    assert cli(["optimizers", "alias", "mine", "prod", "--delete"], sdk) == 0
    assert cli(["optimizers", "alias", "mine", "prod"], sdk) == 2  # usage: neither a version nor --delete
    assert cli(["optimizers", "delete", "mine:1"], sdk) == 0
    capsys.readouterr()
    assert cli(["optimizers", "show", "mine:1"], sdk) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "HTTP 404" in err
    assert cli(["optimizers", "delete", "mine"], sdk) == 2
    assert "NAME:VERSION" in capsys.readouterr().err


@SQLITE
def test_sessions_list_delete_prune(sdk, capsys):
    sdk.optimizers.upload("mine", checkpoint_bytes())
    ids = [sdk.sessions.create("mine", {"w": [3]}).id for _ in range(3)]
    assert cli(["sessions", "list", "--json"], sdk) == 0
    assert sorted(s["id"] for s in json.loads(capsys.readouterr().out)) == sorted(ids)
    assert cli(["sessions", "list"], sdk) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["ID", "OPTIMIZER", "STEP"] and len(table) == 4 and "mine:1" in table[1]

    assert cli(["sessions", "delete", ids[0]], sdk) == 0
    assert cli(["sessions", "delete", ids[0]], sdk) == 3  # gone
    capsys.readouterr()
    assert cli(["sessions", "prune"], sdk) == 0  # fresh sessions are not idle for the default hour
    assert "0 session(s)" in capsys.readouterr().out and len(sdk.sessions.list()) == 2
    assert cli(["sessions", "prune", "--idle", "0", "--dry-run"], sdk) == 0
    assert "would delete" in capsys.readouterr().out and len(sdk.sessions.list()) == 2
    assert cli(["sessions", "prune", "--idle", "0"], sdk) == 0
    assert "2 session(s)" in capsys.readouterr().out and sdk.sessions.list() == []
    assert cli(["sessions", "prune", "--idle", "-1"], sdk) == 2


@SQLITE
def test_jobs_list_json_and_show(sdk, capsys):
    assert cli(["jobs", "list", "--json"], sdk) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert cli(["jobs", "show", "nope", "--json"], sdk) == 3


@SQLITE
def test_auth_failures_exit_4(client, make_key, capsys):
    wrong = Client(str(client.base_url), api_key="l2o_wrong", http_client=client)
    assert cli(["optimizers", "list"], wrong) == 4
    assert "invalid API key (HTTP 401)" in capsys.readouterr().err
    optimize_only = Client(str(client.base_url), api_key=make_key("optimize"), http_client=client)
    assert cli(["optimizers", "delete", "x:1"], optimize_only) == 4


def test_no_key_and_no_server_exit_4_and_5_with_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("L2O_API_KEY", raising=False)
    monkeypatch.setenv("L2O_DATA_DIR", str(tmp_path))
    assert main(["optimizers", "list"]) == 4
    err = capsys.readouterr().err
    assert err.startswith("error: no API key") and err.count("\n") == 1
    monkeypatch.setenv("L2O_API_KEY", "l2o_somekey")
    monkeypatch.setenv("L2O_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    for argv in (["optimizers", "list"], ["sessions", "list"], ["jobs", "list"]):
        assert main(argv) == 5
        out = capsys.readouterr()
        assert out.out == "" and "cannot reach the l2o server" in out.err  # no table header before the error


def test_version_and_help_text_with_defaults_for_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == "l2o 0.1.0"

    def parsers(parser, path=("l2o",)):
        yield path, parser
        for action in parser._actions:
            if action.choices and hasattr(action, "_name_parser_map"):
                for name, child in action._name_parser_map.items():
                    yield from parsers(child, (*path, name))

    seen = set()
    for path, parser in parsers(build_parser()):
        seen.add(" ".join(path[1:]))
        text = parser.format_help()
        for action in parser._actions:
            if action.dest in ("help", "version") or hasattr(action, "_name_parser_map"):
                continue
            where = (path, action.dest)
            assert action.help, f"{where} has no help text"
            shows_default = action.default is not None and action.default is not False and action.option_strings
            if shows_default:
                assert f"(default: {action.default})" in " ".join(text.split()), where
    assert {"optimizers list", "optimizers upload", "sessions prune", "train", "eval", "jobs list",
            "keys list"} <= seen


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["optimizers", "frobnicate"])
    assert exit_.value.code == 2
    assert main(["train", "--family", "quadratic"]) == 2  # no --out
    assert "needs --out" in capsys.readouterr().err


def test_keys_list_json_and_bootstrap_writes_the_first_key_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("L2O_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("L2O_DATA_DIR", str(tmp_path / "data"))
    assert main(["db", "upgrade"]) == 0
    assert main(["keys", "bootstrap"]) == 0
    key_file = tmp_path / "data" / "admin.key"
    key = key_file.read_text().strip()
    assert key.startswith("l2o_") and key_file.stat().st_mode & 0o077 == 0  # readable by its owner only
    assert main(["keys", "bootstrap"]) == 0  # a live key exists: nothing written
    assert key_file.read_text().strip() == key and "none written" in capsys.readouterr().out
    assert main(["keys", "list", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["prefix"] == key[:12] and listed["scopes"] == ["optimize", "train", "admin"]
    assert listed["revoked_at"] is None


def test_database_commands_without_a_database_exit_5_with_one_line(monkeypatch, capsys):
    monkeypatch.setenv("L2O_DATABASE_URL", "postgresql+psycopg://l2o:l2o@127.0.0.1:9/l2o")  # nothing listens
    for argv in (["db", "upgrade"], ["keys", "list"], ["keys", "bootstrap"]):
        assert main(argv) == 5, argv
        err = capsys.readouterr().err
        assert err.startswith("error: cannot reach the database: ") and err.count("\n") == 1, err
