"""procrastinate's tables, types and functions (PostgreSQL only; SQLite runs jobs without it).

The schema is the one procrastinate 3.10.0 ships (`procrastinate.schema.SchemaManager.get_schema()`),
frozen in migrations/sql/ so this migration means the same thing whatever procrastinate is installed.
When an upgrade of procrastinate changes its schema, a new migration applies the files it ships in
`procrastinate/sql/migrations/` for the versions in between.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-02
"""

from __future__ import annotations

from pathlib import Path

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SCHEMA_SQL = Path(__file__).resolve().parents[1] / "sql" / "procrastinate-3.10.0.sql"
TABLES = ["procrastinate_events", "procrastinate_periodic_defers", "procrastinate_jobs", "procrastinate_workers"]
TYPES = ["procrastinate_job_to_defer_v1", "procrastinate_job_event_type", "procrastinate_job_status"]


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    # The driver reads `%` as a placeholder even without parameters; procrastinate escapes it the same way.
    bind.exec_driver_sql(SCHEMA_SQL.read_text(encoding="utf-8").replace("%", "%%"))


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for table in TABLES:
        bind.exec_driver_sql(f"DROP TABLE IF EXISTS {table} CASCADE")
    # Every procrastinate function in the schema the tables were in (the first on the search path).
    functions = bind.exec_driver_sql(
        "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = current_schema() AND p.proname LIKE 'procrastinate\\_%%'").scalars().all()
    for signature in functions:
        bind.exec_driver_sql(f"DROP FUNCTION IF EXISTS {signature} CASCADE")
    for type_ in TYPES:
        bind.exec_driver_sql(f"DROP TYPE IF EXISTS {type_} CASCADE")
