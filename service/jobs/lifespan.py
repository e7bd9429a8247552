"""The job executor's life inside the API process: started with the app, stopped with it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.jobs.executor import make_executor


@asynccontextmanager
async def jobs_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the executor with the app (as `app.state.jobs`); on shutdown the embedded one hands its
    running job back."""
    executor = make_executor(app.state.settings, app.state.db)
    await executor.start()
    app.state.jobs = executor
    try:
        yield
    finally:
        await executor.stop()
