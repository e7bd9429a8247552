import pytest

from service.cli.serve import MALLOC_TUNING


@pytest.fixture(autouse=True)
def undo_malloc_tuning(monkeypatch):
    """`serve --workers N` run in this process writes MALLOC_* for its workers: recorded, so it is undone."""
    for name in MALLOC_TUNING:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
