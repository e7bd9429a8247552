"""create_app(settings): the FastAPI app, its lifespan, its routers and its one error handler.

On start the app checks the database is at the migration head and refuses to start otherwise, naming the
fix (`l2o db upgrade`). The embedded default (no L2O_DATABASE_URL: a SQLite file in the data directory)
is the exception: an empty database is created on first start, an admin key is written to
<data_dir>/admin.key (mode 0600) and its path logged. Then the shipped pretrained optimizers are
registered, so a new user can open a session at once.

Other components plug in by adding a router to ROUTERS and, when they hold resources, a lifespan to
COMPONENTS: an async context manager factory taking the app, entered in order at start and exited in
reverse at shutdown. A component may set `app.state.is_version_in_use` (sessions) or add a check to
`app.state.readiness` (name -> callable that raises when not ready).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

import service
from service.api import dashboard, docs, health, jobs, keys, optimizers, sessions
from service.api.body import BodyLimitMiddleware
from service.api.key_cache import KeyCache
from service.api.ratelimit import rate_limit_component
from service.api.schemas import ErrorResponse
from service.api.streams import StreamSlots
from service.config import Settings
from service.errors import ClientDisconnected, DatabaseNotReady, L2OError, ValidationError, by_status
from service.jobs.lifespan import jobs_lifespan
from service.metrics import MetricsMiddleware
from service.registry import bootstrap, migrate
from service.registry.db import Database
from service.registry.service import never_in_use
from service.sessions.lifespan import sessions_lifespan

log = logging.getLogger(__name__)

Component = Callable[[FastAPI], AbstractAsyncContextManager[None]]


@asynccontextmanager
async def registry_component(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    db: Database = app.state.db
    await run_in_threadpool(start_registry, settings, db)
    try:
        yield
    finally:
        db.dispose()


def start_registry(settings: Settings, db: Database) -> None:
    migrate.ensure_schema(db.url, embedded=settings.embedded)
    if settings.embedded:
        bootstrap.ensure_admin_key(db, settings.admin_key_path)  # logs the file's path, never the key
    if settings.register_pretrained:
        bootstrap.register_pretrained(db, settings.pretrained_dir)


# Sessions first: routes are matched in order, and a step is the request whose latency users feel.
ROUTERS = [sessions.router, health.router, optimizers.router, keys.router, jobs.router, dashboard.router,
           docs.router]
COMPONENTS: list[Component] = [registry_component, rate_limit_component, sessions_lifespan, jobs_lifespan]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for component in COMPONENTS:
                await stack.enter_async_context(component(app))
            # Everything start-up made (torch, the app, the kernel) lives as long as the process: kept out
            # of the collector's sight, a full collection scans only what requests made. Unfrozen, one
            # costs tens of milliseconds here and comes every few thousand steps.
            gc.freeze()
            try:
                yield
            finally:
                gc.unfreeze()   # for a process that goes on after this app (tests): collectable again

    app = FastAPI(title="l2o", version=service.__version__, lifespan=lifespan,
                  description="Learned optimizers as a service.", docs_url=None, redoc_url=None,  # api/docs.py
                  responses={"default": {"model": ErrorResponse, "description": "an error"}})
    app.state.settings = settings
    app.state.db = Database(settings.db_url)
    app.state.is_version_in_use = never_in_use
    app.state.readiness = {"database": lambda: check_database(app.state.db)}
    app.state.rate_limiter = None  # set by rate_limit_component when L2O_RATE_LIMIT_PER_S > 0
    app.state.key_cache = KeyCache(settings.auth_grace_s)
    app.state.event_streams = StreamSlots(settings.events_max_per_key, settings.events_max_total)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    app.add_middleware(MetricsMiddleware)
    for router in ROUTERS:
        app.include_router(router)
    install_error_handlers(app)
    return app


def check_database(db: Database) -> None:
    db.ping()
    migrate.check_at_head(db.engine)


def error_response(request: Request, status: int, code: str, message: str, detail: Any = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    request.state.error_code = code  # read by MetricsMiddleware
    return JSONResponse({"error": {"code": code, "message": message, "detail": detail}}, status_code=status,
                        headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(L2OError)
    async def l2o_error(request: Request, exc: L2OError) -> JSONResponse:
        return error_response(request, exc.status, exc.code, exc.message, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return error_response(request, 422, ValidationError.code, f"invalid request: {where}", errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(request, exc.status_code, by_status(exc.status_code).code, str(exc.detail), None,
                              exc.headers)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def database_unreachable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unreachable on %s %s: %s", request.method, request.url.path,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return error_response(request, 503, DatabaseNotReady.code, "the database is unreachable; retry shortly",
                              None, {"Retry-After": "1"})

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # Expected (an aborted upload, a killed client): one line, no traceback. Nobody reads the answer.
        log.warning("client disconnected during %s %s before its body was read", request.method, request.url.path)
        return error_response(request, 400, ClientDisconnected.code, "the client disconnected")

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request, 500, L2OError.code, "internal server error")
