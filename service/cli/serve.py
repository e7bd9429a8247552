"""`l2o serve`: run the HTTP service with uvicorn. Settings come from L2O_* environment variables."""

from __future__ import annotations

import argparse
import logging


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="run the HTTP service",
                              description="Run the HTTP service. Every setting is an L2O_* environment variable; "
                                          "--host, --port and --workers override theirs.")
    p.add_argument("--host", help="interface to listen on (L2O_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (L2O_PORT, default 8000)")
    p.add_argument("--workers", type=int, help="worker processes (L2O_WORKERS, default 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    import uvicorn

    from service.app import create_app, start_registry
    from service.config import Settings
    from service.errors import DatabaseNotReady
    from service.registry.db import Database

    overrides = {k: v for k in ("host", "port", "workers") if (v := getattr(args, k, None)) is not None}
    settings = Settings(**overrides)
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
    # Access lines are written at info; above it, uvicorn would still build each line's fields for nothing.
    logs = {"log_level": settings.log_level,
            "access_log": logging.getLevelNamesMapping().get(settings.log_level.upper(), logging.INFO) <= logging.INFO}
    if settings.workers > 1:
        # Each worker process builds its own app from the same environment.
        uvicorn.run("service.app:create_app", factory=True, host=settings.host, port=settings.port,
                    workers=settings.workers, **logs)
    else:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, **logs)
    return 0
