"""The step route, called straight from the middleware stack: FastAPI's routing and dependency resolution
cost a step request more than the server's own work on a small model.

    ... -> MetricsMiddleware -> BodyLimitMiddleware -> StepShortcut -> (FastAPI's router, for every other request)

The shortcut takes the requests the step route matches (Starlette's own matching), resolves the same
dependencies the route declares (the key, checked and scoped as `OptimizeKey` does) and awaits the
route's own handler, so a step runs exactly the code it would through FastAPI. An error becomes the
answer the app's exception handlers give it. The route stays declared in api/sessions.py, which is
where its OpenAPI description comes from.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from starlette.routing import Match

from service.api import deps, sessions


class StepShortcut:
    def __init__(self, app: Any) -> None:
        self.app = app
        self._route: APIRoute | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/step"):
            await self.app(scope, receive, send)
            return
        route = self._route or self._find()
        match, child = route.matches(scope)
        if match is not Match.FULL:
            await self.app(scope, receive, send)
            return
        scope.update(child)   # the route and its path parameters, as the router would set them
        request = Request(scope, receive)
        try:
            response = await self._step(request)
        except Exception as exc:
            response = await self._error(request, exc)
        await response(scope, receive, send)

    def _find(self) -> APIRoute:
        found = [r for r in sessions.router.routes if isinstance(r, APIRoute) and r.endpoint is sessions.step]
        if len(found) != 1:
            raise RuntimeError(f"the sessions router declares {len(found)} step routes, expected one")
        self._route = found[0]
        return self._route

    @staticmethod
    async def _step(request: Request) -> Any:
        credentials = await deps.bearer(request)
        state = request.app.state
        # SQLite answers the key check from a local file faster than a worker thread wakes; a database
        # across the network gets a worker thread, as FastAPI gives the dependency.
        if state.db.backend == "sqlite":
            key = deps.current_key(request, credentials)
        else:
            key = await run_in_threadpool(deps.current_key, request, credentials)
        key = await deps.OPTIMIZE_SCOPE(key)
        return await sessions.step(request.path_params["session_id"], request, key, state.sessions, state.settings)

    @staticmethod
    async def _error(request: Request, exc: Exception) -> Any:
        """The answer the app's exception handlers give `exc` (the most specific handler, as Starlette picks)."""
        handlers = request.app.exception_handlers
        for cls in type(exc).__mro__:
            if cls in handlers:
                return await handlers[cls](request, exc)
        raise exc
