"""`name@latest` is the newest version unless an alias called `latest` was set explicitly."""

from service.registry import service as registry
from service.registry.db import Database
from tests.conftest import checkpoint_bytes


def test_latest_resolves_to_the_newest_version_until_set_explicitly(database_url):
    from service.registry import migrate

    migrate.upgrade(database_url)
    db = Database(database_url)
    with db.session() as s:
        registry.register_version(s, "lstm", checkpoint_bytes(seed=1))
        registry.register_version(s, "lstm", checkpoint_bytes(seed=2))
        s.commit()
    with db.session() as s:
        assert registry.resolve(s, "lstm@latest").version == 2
        registry.set_alias(s, "lstm", "latest", 1)
        s.commit()
    with db.session() as s:
        assert registry.resolve(s, "lstm@latest").version == 1
