"""First start: the embedded default makes its database and an admin key; shipped checkpoints are registered."""

from __future__ import annotations

import logging
import stat

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.errors import DatabaseNotReady
from service.lopt import Checkpoint
from service.registry import bootstrap
from service.registry.db import Database
from tests.conftest import checkpoint_bytes


def ship(directory, name: str, seed: int = 0) -> None:
    Checkpoint.from_bytes(checkpoint_bytes(seed=seed)).save(directory / name)


@pytest.fixture
def embedded(tmp_path, monkeypatch) -> Settings:
    monkeypatch.delenv("L2O_DATABASE_URL", raising=False)
    ship(tmp_path / "pretrained", "lstm-base")
    return Settings(data_dir=tmp_path / "data", pretrained_dir=tmp_path / "pretrained")


def test_first_start_of_the_embedded_default(embedded, caplog):
    caplog.set_level(logging.INFO)
    with TestClient(create_app(embedded)) as client:
        path = embedded.admin_key_path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        key = path.read_text().strip()
        assert str(path) in caplog.text and key not in caplog.text
        listed = client.get("/v1/optimizers", headers={"Authorization": f"Bearer {key}"})
        assert listed.status_code == 200
        assert [(o["name"], o["latest_version"]) for o in listed.json()] == [("lstm-base", 1)]
        version = client.get("/v1/optimizers/lstm-base/versions/1", headers={"Authorization": f"Bearer {key}"})
        assert version.json()["source"] == "pretrained"

    # A second start keeps the key and does not register the same checkpoint again.
    ship(embedded.pretrained_dir, "lstm-small", seed=3)
    with TestClient(create_app(embedded)) as client:
        assert embedded.admin_key_path.read_text().strip() == key
        names = client.get("/v1/optimizers", headers={"Authorization": f"Bearer {key}"}).json()
        assert [(o["name"], o["version_count"]) for o in names] == [("lstm-base", 1), ("lstm-small", 1)]


def test_a_broken_pretrained_folder_is_skipped(tmp_path, database_url, caplog):
    ship(tmp_path, "good")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "weights.safetensors").write_bytes(b"junk")
    ship(tmp_path, "Bad Name")
    db = Database(database_url)
    try:
        assert bootstrap.register_pretrained(db, tmp_path) == ["good:1"]
        assert bootstrap.register_pretrained(db, tmp_path) == []
    finally:
        db.dispose()
    assert "broken" in caplog.text and "Bad Name" in caplog.text


def test_a_configured_database_behind_head_is_refused(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'new.db'}",
                        pretrained_dir=tmp_path)
    with pytest.raises(DatabaseNotReady, match="run `l2o db upgrade`"), TestClient(create_app(settings)):
        pass
    assert not settings.admin_key_path.exists()


def test_no_admin_key_file_for_a_configured_database(settings, client):
    assert not settings.admin_key_path.exists()
