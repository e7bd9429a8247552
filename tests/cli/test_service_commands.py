"""`l2o db`, `l2o keys` and `l2o serve`, run through the real parser against a database from the environment."""

from __future__ import annotations

import pytest

from service.cli import main
from service.registry import keys, migrate
from service.registry.db import Database, make_engine


@pytest.fixture
def env(tmp_path, monkeypatch) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("L2O_DATABASE_URL", url)
    monkeypatch.setenv("L2O_DATA_DIR", str(tmp_path / "data"))
    return url


def revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        return migrate.current_revision(engine)
    finally:
        engine.dispose()


def test_db_upgrade_current_and_downgrade(env, capsys):
    assert main(["db", "current"]) == 1
    assert "current: (empty)" in capsys.readouterr().out
    assert main(["db", "upgrade"]) == 0
    assert revision(env) == migrate.head_revision()
    assert main(["db", "current"]) == 0
    assert main(["db", "downgrade", "-1"]) == 0
    assert revision(env) != migrate.head_revision()


def test_keys_need_a_migrated_configured_database(env, capsys):
    assert main(["keys", "list"]) == 1
    assert "run `l2o db upgrade`" in capsys.readouterr().err


def test_keys_create_list_revoke(env, capsys):
    main(["db", "upgrade"])
    capsys.readouterr()
    assert main(["keys", "create", "--name", "ci", "--scope", "train", "--scope", "optimize"]) == 0
    out = capsys.readouterr()
    key = out.out.strip()
    assert key.startswith("l2o_") and "shown only this once" in out.err
    db = Database(env)
    try:
        with db.session() as s:
            row = keys.authenticate(s, key)
            assert row.scopes == ("optimize", "train") and row.name == "ci"
    finally:
        db.dispose()
    assert main(["keys", "list"]) == 0
    listed = capsys.readouterr().out
    assert key[:12] in listed and key not in listed and "live" in listed
    assert main(["keys", "revoke", str(row.id)]) == 0
    assert main(["keys", "revoke", "999"]) == 3  # not found
    assert "no API key with id 999" in capsys.readouterr().err


def test_keys_create_refuses_an_unknown_scope(env, capsys):
    with pytest.raises(SystemExit):
        main(["keys", "create", "--name", "x", "--scope", "root"])
    assert "invalid choice" in capsys.readouterr().err


def test_serve_refuses_a_database_behind_head_naming_the_fix(env, monkeypatch, capsys):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: calls.append((a, kw)))
    assert main(["serve"]) == 1
    assert "run `l2o db upgrade`" in capsys.readouterr().err and calls == []

    main(["db", "upgrade"])
    assert main(["serve", "--port", "9123"]) == 0
    (app,), kwargs = calls[0]
    assert app.state.settings.database_url == env
    assert (kwargs["host"], kwargs["port"]) == ("127.0.0.1", 9123)


def test_serve_on_the_embedded_default_prepares_everything_before_uvicorn(tmp_path, monkeypatch):
    import uvicorn

    monkeypatch.delenv("L2O_DATABASE_URL", raising=False)
    monkeypatch.setenv("L2O_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("L2O_PRETRAINED_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("L2O_SESSION_STORE", "redis://127.0.0.1:6379/0")   # several workers need a shared store
    monkeypatch.setenv("L2O_WORKERS", "1")  # serve writes --workers into the environment: undone after the test
    seen = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: seen.append((tmp_path / "data" / "admin.key").exists()))
    assert main(["serve", "--workers", "2"]) == 0
    assert seen == [True]
    assert revision(f"sqlite:///{tmp_path / 'data' / 'l2o.db'}") == migrate.head_revision()
