"""Liveness, readiness and metrics: the routes that need no API key.

/readyz tells anyone whether the service is ready, and which checks fail; what each check found (a
database's host, port and driver, a migration revision) only to an admin key.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from service.api import deps
from service.errors import L2OError, ServiceUnavailable

router = APIRouter(tags=["health"])

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc",
                          "/openapi.json"})


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up and serving."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> dict[str, Any]:
    """Every readiness check passes: the database is reachable and at the migration head (and whatever
    other components registered in app.state.readiness)."""
    results = await run_in_threadpool(_run_checks, request.app.state.readiness)
    failed = {name: msg for name, msg in results.items() if msg != "ok"}
    credentials = await deps.bearer(request)
    if credentials is None or not await run_in_threadpool(_is_admin, request, credentials):
        if failed:
            raise ServiceUnavailable(f"not ready: {', '.join(failed)} failed (an admin key sees why)",
                                     detail={"failed": list(failed)})
        return {"status": "ready"}
    if failed:
        raise ServiceUnavailable("not ready: " + "; ".join(f"{k}: {v}" for k, v in failed.items()),
                                 detail={"checks": results})
    return {"status": "ready", "checks": results}


@router.get("/metrics", response_class=Response)
def metrics() -> Response:
    """Prometheus text format."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def _is_admin(request: Request, credentials: HTTPAuthorizationCredentials) -> bool:
    """Whether the request carries a live admin key; any other key is simply not one."""
    try:
        return deps.current_key(request, credentials).has_scope("admin")
    except L2OError:
        return False


def _run_checks(checks: dict[str, Any]) -> dict[str, str]:
    results = {}
    for name, check in checks.items():
        try:
            check()
            results[name] = "ok"
        except Exception as exc:  # a failing check is the answer, not an error of this endpoint
            results[name] = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
    return results
