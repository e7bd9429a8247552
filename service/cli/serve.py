"""`l2o serve`: run the HTTP service with uvicorn. Settings come from L2O_* environment variables."""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import sys

import pydantic

from service.config import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="run the HTTP service",
                              description="Run the HTTP service. Every setting is an L2O_* environment variable; "
                                          "--host, --port and --workers override theirs.")
    p.add_argument("--host", help="interface to listen on (L2O_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (L2O_PORT, default 8000)")
    p.add_argument("--workers", type=int, help="worker processes (L2O_WORKERS, default 1)")
    p.set_defaults(func=run)


def workers_refusal(settings: Settings) -> str | None:
    """Why these settings cannot run in several worker processes, or None when they can."""
    if settings.workers > 1 and settings.session_store == "memory":
        return (f"--workers {settings.workers} (L2O_WORKERS) needs a session store the worker processes share: "
                "the memory store lives in one process; set L2O_SESSION_STORE=redis://host:6379/0, or run one worker")
    return None


# glibc hands every freed block between 128 KiB and 32 MiB back to the OS, so each step's request and answer
# buffers (4 MB at 1M coordinates) came back as fresh pages: 1,900 page faults a step. Blocks under 64 MiB now
# stay in the heap for the next step; larger ones, session states from 200k coordinates on, are mapped and
# unmapped as before.
MALLOC_TUNING = {"MALLOC_MMAP_THRESHOLD_": 64 << 20, "MALLOC_TRIM_THRESHOLD_": 128 << 20}
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


def keep_freed_buffers(workers: int = 1) -> None:
    """MALLOC_TUNING for this process (mallopt) and, with several workers, for the worker processes (their
    environment, read by glibc at start), where the environment does not set its own; a no-op where the C
    library is not glibc."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    for (name, value), param in zip(MALLOC_TUNING.items(), (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD), strict=True):
        if name not in os.environ:
            mallopt(param, value)
            if workers > 1:
                os.environ[name] = str(value)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from service.api.connections import protocol_for
    from service.app import create_app, start_registry
    from service.errors import DatabaseNotReady
    from service.registry.db import Database

    overrides = {k: v for k in ("host", "port", "workers") if (v := getattr(args, k, None)) is not None}
    try:
        settings = Settings(**overrides)
    except pydantic.ValidationError as exc:
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"l2o serve: invalid setting: {where}", file=sys.stderr)
        return 2
    refusal = workers_refusal(settings)
    if refusal is not None:
        print(f"l2o serve: {refusal}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    # Done once here, before any worker starts: a database behind head ends with one clear line rather
    # than a traceback per worker, and several workers never race to create the first admin key.
    db = Database(settings.db_url)
    try:
        start_registry(settings, db)
    except DatabaseNotReady as exc:
        print(f"l2o serve: {exc.message}", file=sys.stderr)
        return 1
    finally:
        db.dispose()
    keep_freed_buffers(settings.workers)
    # Access lines are written at info; above it, uvicorn would still build each line's fields for nothing.
    logs = {"log_level": settings.log_level,
            "access_log": logging.getLevelNamesMapping().get(settings.log_level.upper(), logging.INFO) <= logging.INFO}
    if settings.workers > 1:
        # Each worker process builds its own app from the environment: what the flags set goes there too,
        # so every worker runs with the settings checked above.
        os.environ.update({f"L2O_{k.upper()}": str(v) for k, v in overrides.items()})
        uvicorn.run("service.app:create_app", factory=True, host=settings.host, port=settings.port,
                    workers=settings.workers, http="service.api.connections:HttpProtocol", **logs)
    else:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, http=protocol_for(settings),
                    **logs)
    return 0
