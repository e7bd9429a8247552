"""Alembic, configured in code: `l2o db upgrade` works from any directory, with no alembic.ini.

The scripts in migrations/ are the schema. `ensure_schema` is what the server and the CLI run before
touching the database: a database behind head is refused with the command that fixes it, except the
embedded SQLite default when it is still empty, which is created on first start.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

from service.errors import DatabaseNotReady
from service.registry.db import make_engine


def migrations_dir() -> Path:
    """migrations/ at the root of a source checkout, or service/migrations in an installed wheel."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "migrations"
    return installed if (installed / "env.py").is_file() else package.parent / "migrations"


MIGRATIONS_DIR = migrations_dir()
UPGRADE_HINT = "run `l2o db upgrade`"
log = logging.getLogger(__name__)
# Tables a migration creates from another library's SQL, with no model: autogenerate must leave them be.
FOREIGN_TABLE_PREFIXES = ("procrastinate_",)


def include_name(name: str | None, type_: str, parent_names: dict) -> bool:
    """Alembic's autogenerate filter: skip the tables (and their indexes) that have no model."""
    table = name if type_ == "table" else parent_names.get("table_name")
    return not (table or "").startswith(FOREIGN_TABLE_PREFIXES)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # `%` is ConfigParser interpolation; a password may contain one.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def revision(url: str, message: str, *, autogenerate: bool = False) -> None:
    command.revision(alembic_config(url), message=message, autogenerate=autogenerate)


@cache
def scripts() -> ScriptDirectory:
    """The migration scripts, parsed once: they do not change while the process runs, and /readyz asks often."""
    return ScriptDirectory(str(MIGRATIONS_DIR))


def head_revision() -> str:
    head = scripts().get_current_head()
    assert head is not None, f"no migrations in {MIGRATIONS_DIR}"
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def is_empty(engine: Engine) -> bool:
    return not inspect(engine).get_table_names()


def check_at_head(engine: Engine) -> None:
    """Raise DatabaseNotReady, naming the fix, unless the database is at the code's migration head."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return
    if current is None:
        raise DatabaseNotReady(f"the database has no schema yet: {UPGRADE_HINT}",
                               detail={"current": None, "head": head})
    known = {s.revision for s in scripts().walk_revisions()}
    if current not in known:
        raise DatabaseNotReady(
            f"the database is at revision {current}, which this version of l2o does not know: "
            "it was migrated by a newer l2o", detail={"current": current, "head": head})
    raise DatabaseNotReady(f"the database is at revision {current}, behind {head}: {UPGRADE_HINT}",
                           detail={"current": current, "head": head})


def ensure_schema(url: str, *, embedded: bool) -> bool:
    """Check the schema is at head; create it when `embedded` and the database is empty. True if created."""
    engine = make_engine(url, foreign_keys=False)
    try:
        if embedded and is_empty(engine):
            upgrade(url)
            log.warning("created the embedded database at %s", engine.url)
            return True
        check_at_head(engine)
        return False
    finally:
        engine.dispose()
