"""The step service's life inside the API process: the store opened, the kernel built, idle sessions
swept; on shutdown the store closed (the memory store saves every session to the data dir then, and
loads them on the next start)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import torch
from fastapi import FastAPI

from service.config import Settings
from service.errors import ValidationError
from service.lopt import OptimizerConfig, kernel
from service.lopt.device import resolve_device
from service.sessions.memory_store import MemoryStore
from service.sessions.redis_store import RedisStore
from service.sessions.service import SessionLimits, SessionService
from service.sessions.store import SessionStore
from service.sessions.versions import RegistryVersions

log = logging.getLogger(__name__)

SNAPSHOT_FILE = "sessions.safetensors"


@asynccontextmanager
async def sessions_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Serve sessions as `app.state.sessions` while the app runs."""
    settings: Settings = app.state.settings
    if settings.session_store == "memory" and settings.workers > 1:
        raise RuntimeError(f"L2O_WORKERS={settings.workers} needs a shared session store: set "
                           "L2O_SESSION_STORE=redis://... (the memory store lives in one process)")
    store = open_store(settings.session_store, data_dir=settings.data_dir.expanduser(),
                       key_prefix=settings.session_key_prefix)
    await anyio.to_thread.run_sync(store.open)
    device = torch.device(resolve_device(settings.step_device, "L2O_STEP_DEVICE"))
    # Build (or load from torch's extension cache) the step kernel now, so no first step stalls on a compile.
    app.state.kernel_warmup_s = await anyio.to_thread.run_sync(kernel.warmup, OptimizerConfig(), device,
                                                                settings.kernel)
    log.info("step kernel ready (%s on %s) in %.3f s", kernel.backend(OptimizerConfig(), device, settings.kernel),
             device, app.state.kernel_warmup_s)
    sessions = SessionService(store, RegistryVersions(app.state.db), SessionLimits.from_settings(settings),
                              device=device, kernel=settings.kernel)
    app.state.sessions = sessions
    app.state.is_version_in_use = sessions.is_version_in_use
    sweeper = asyncio.create_task(sessions.run_sweeper())
    try:
        yield
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await anyio.to_thread.run_sync(store.close)


def open_store(url: str, *, data_dir: Path | None = None, key_prefix: str = "l2o:") -> SessionStore:
    """The store an `L2O_SESSION_STORE` value names."""
    if url == "memory":
        return MemoryStore(snapshot=data_dir / SNAPSHOT_FILE if data_dir is not None else None)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore.from_url(url, prefix=key_prefix)
    raise ValidationError(f"L2O_SESSION_STORE must be 'memory' or a redis:// URL, got {url!r}")
