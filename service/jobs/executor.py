"""Who runs jobs: the embedded executor (SQLite default) or procrastinate workers (PostgreSQL); either way
each job runs in a process of its own (process.py), never in the API process.

The API holds one executor: it starts with the app, is told about each job once its row is committed
(`dispatch`), and stops with the app. Both run `runner.run_job`, so both behave the same.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy import make_url

from service.config import Settings
from service.jobs.runner import RunnerConfig
from service.registry.db import Database


class Executor(Protocol):
    name: str

    async def start(self) -> None: ...

    async def dispatch(self, job_id: str) -> None: ...

    async def stop(self) -> None: ...


def executor_name(settings: Settings) -> str:
    """`auto` is embedded on SQLite and procrastinate on PostgreSQL."""
    if settings.job_executor != "auto":
        return settings.job_executor
    return "procrastinate" if make_url(settings.db_url).get_backend_name() == "postgresql" else "embedded"


def make_executor(settings: Settings, db: Database) -> Executor:
    if executor_name(settings) == "procrastinate":
        from service.jobs.queue import ProcrastinateExecutor

        return ProcrastinateExecutor(settings.db_url)
    from service.jobs.embedded import EmbeddedExecutor
    from service.jobs.process import ProcessConfig

    return EmbeddedExecutor(db, RunnerConfig.from_settings(settings), ProcessConfig.from_settings(settings),
                            settings.job_poll_s)
