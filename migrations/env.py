"""Alembic environment. Configured from code by service.registry.migrate (no alembic.ini)."""

from __future__ import annotations

from alembic import context

from service.registry.db import make_engine
from service.registry.migrate import include_name
from service.registry.models import Base

config = context.config
target_metadata = Base.metadata


def run_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True, include_name=include_name)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = make_engine(config.get_main_option("sqlalchemy.url"), foreign_keys=False)
    try:
        with engine.connect() as connection:
            # SQLite cannot ALTER most things; batch mode rewrites the table instead.
            context.configure(connection=connection, target_metadata=target_metadata,
                              render_as_batch=connection.dialect.name == "sqlite", include_name=include_name)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
