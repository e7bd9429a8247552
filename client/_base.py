"""BaseClient: everything the two clients share, which is everything but I/O.

It finds the server and the key, builds requests, decides what to retry and how long to wait, and turns
error answers into exceptions. Client and AsyncClient (client/_client.py) only send and sleep.
"""

from __future__ import annotations

import email.utils
import ipaddress
import logging
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import platformdirs

import client
from client import _constants as c
from client._body import AnswerBuffer, Pieces
from client._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    L2OError,
    SessionLostError,
    SessionNotFoundError,
    error_class,
)

log = logging.getLogger("l2o.client")

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


@dataclass(frozen=True)
class RequestOptions:
    """One API call, before it is sent (and before each retry of it)."""

    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    content: bytes | Pieces | None = None
    headers: Mapping[str, str] | None = None
    # None: by method. A step says True: its step number makes a repeat harmless.
    idempotent: bool | None = None
    timeout: httpx.Timeout | None = None
    stream: bool = False
    session_id: str | None = None  # the session the call is about, to tell a lost session from a wrong id
    into: AnswerBuffer | None = None  # a success's body is read into this (the response is left empty)

    @property
    def safe_to_repeat(self) -> bool:
        return self.idempotent if self.idempotent is not None else self.method.upper() in IDEMPOTENT_METHODS


def default_data_dir() -> Path:
    """The per-user data directory ($XDG_DATA_HOME/l2o, else ~/.local/share/l2o on Linux), which is also the
    embedded server's default (service/config.py)."""
    return Path(platformdirs.user_data_dir("l2o", appauthor=False))


def data_dir() -> Path:
    """The embedded server's data directory: L2O_DATA_DIR, else the default."""
    if os.environ.get("L2O_DATA_DIR"):
        return Path(os.environ["L2O_DATA_DIR"]).expanduser()
    return default_data_dir()


def limits(max_connections: int) -> httpx.Limits:
    """The connection pool: every connection kept alive between calls (a training loop steps on one),
    at most `max_connections` open to the server at once."""
    if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
        raise ValueError(f"max_connections must be a whole number of at least 1, got {max_connections!r}")
    return httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections,
                        keepalive_expiry=c.KEEPALIVE_EXPIRY)


def find_api_key(base_url: str | None = None) -> str | None:
    """L2O_API_KEY, else the key the embedded server writes to <data_dir>/admin.key on first start, for a
    server on this machine only: that key holds every scope, and must never reach another host."""
    key = os.environ.get(c.KEY_ENV, "").strip()
    if key:
        return key
    if base_url is not None and not is_local(base_url):
        return None
    try:
        return (data_dir() / "admin.key").read_text().strip() or None
    except OSError:
        return None


def is_local(base_url: str) -> bool:
    """Whether the URL names this machine by a loopback address (or `localhost`), where the embedded server
    that wrote admin.key listens."""
    try:
        host = httpx.URL(base_url).host
    except httpx.InvalidURL:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BaseClient:
    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float | httpx.Timeout | None = None, max_retries: int = c.DEFAULT_MAX_RETRIES,
                 headers: Mapping[str, str] | None = None) -> None:
        self.base_url = (base_url or os.environ.get(c.URL_ENV) or c.DEFAULT_URL).rstrip("/")
        key = api_key or find_api_key(self.base_url)
        if not key:
            if not is_local(self.base_url):
                raise L2OError(f"no API key for {self.base_url}: pass api_key=... or set {c.KEY_ENV} (the local "
                               f"admin key in {data_dir() / 'admin.key'} is sent only to a server on this machine)")
            raise L2OError(f"no API key: pass api_key=..., set {c.KEY_ENV}, or start the embedded server once "
                           f"(`l2o serve`) so that it writes {data_dir() / 'admin.key'}")
        self.api_key = key
        self.timeout = (timeout if isinstance(timeout, httpx.Timeout)
                        else httpx.Timeout(timeout, connect=min(timeout, 5.0)) if timeout is not None
                        else c.DEFAULT_TIMEOUT)
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.max_retries = max_retries
        self.headers = {"Authorization": f"Bearer {key}", "User-Agent": f"l2o-python/{client.__version__}",
                        **(headers or {})}
        # Sessions this client opened and has not deleted: a 404 on one of them means the server lost it.
        self._own_sessions: set[str] = set()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    # --- requests ------------------------------------------------------------------------------------------

    def build_request(self, http: httpx.Client | httpx.AsyncClient, options: RequestOptions) -> httpx.Request:
        """The request, built anew for every attempt, so a retry sends the same bytes."""
        content: Any = options.content
        headers = {**self.headers, **(options.headers or {})}
        if isinstance(content, Pieces):
            headers["Content-Length"] = str(content.size)  # (httpx sends an iterable chunked without one)
            content = content if isinstance(http, httpx.Client) else content.aiter()
        return http.build_request(options.method, self.base_url + options.path, params=options.params,
                                  json=options.json, content=content, headers=headers,
                                  timeout=options.timeout or self.timeout)

    def streams(self, options: RequestOptions) -> bool:
        return options.stream or options.into is not None

    # --- retries ------------------------------------------------------------------------------------------------

    def should_retry(self, options: RequestOptions, attempt: int, *, response: httpx.Response | None = None,
                     error: Exception | None = None) -> bool:
        if attempt >= self.max_retries:
            return False
        if error is not None:
            if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
                return True  # nothing reached the server: always safe
            return options.safe_to_repeat and isinstance(
                error, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError)
        assert response is not None
        if response.status_code == 429:
            if error_of(response).get("code") == "too_many_sessions":
                return False  # waiting frees no session: the caller must delete one (or let one expire)
            # Refused before any work was done; but a wait longer than the cap is the caller's to decide.
            after = retry_after(response)
            return after is None or after <= c.MAX_RETRY_AFTER
        return response.status_code in c.RETRY_STATUSES and options.safe_to_repeat

    def done_before(self, options: RequestOptions, attempt: int, response: httpx.Response) -> bool:
        """A retried DELETE that finds nothing: the attempt whose answer was lost deleted it."""
        return attempt > 0 and options.method.upper() == "DELETE" and response.status_code == 404

    def retry_delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        after = retry_after(response) if response is not None else None
        if after is not None:
            return min(after, c.MAX_RETRY_AFTER)
        backoff = min(c.INITIAL_RETRY_DELAY * 2**attempt, c.MAX_RETRY_DELAY)
        return backoff * (0.75 + random.random() / 4)  # jitter, so clients that failed together do not return together

    def log_retry(self, options: RequestOptions, attempt: int, delay: float, why: str) -> None:
        log.info("%s %s: %s; retry %d of %d in %.2f s", options.method, options.path, why, attempt + 1,
                 self.max_retries, delay)

    # --- answers -------------------------------------------------------------------------------------------

    def connection_error(self, exc: httpx.TransportError, request: httpx.Request | None) -> APIConnectionError:
        cls = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
        what = "timed out" if cls is APITimeoutError else "failed"
        return cls(f"the request to {self.base_url} {what} ({type(exc).__name__}: {exc}); is the l2o server running? "
                   f"set {c.URL_ENV} or base_url to its address", request=request)

    def status_error(self, response: httpx.Response, options: RequestOptions) -> APIStatusError:
        """The exception for an error answer (its body already read)."""
        error = error_of(response)
        code, message, detail = error.get("code"), error.get("message"), error.get("detail")
        if not message:
            message = (response.text[:300].strip() or response.reason_phrase
                       or f"HTTP {response.status_code}")
        cls = error_class(response.status_code, code)
        if issubclass(cls, SessionNotFoundError) and options.session_id in self._own_sessions:
            self._own_sessions.discard(options.session_id)
            cls = SessionLostError
            message = (f"session {options.session_id} is gone from the server, though this client opened it and "
                       "did not delete it: the server most likely restarted and lost its in-memory sessions. "
                       "Resume from your last optimizer.state_dict(): optimizer.load_state_dict(state) opens a new "
                       "session that continues it (or POST the state to /v1/sessions/resume)")
        return cls(message, response=response, code=code, detail=detail)

    def json_of(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise APIResponseError(f"{response.request.method} {response.request.url.path} answered "
                                   f"{response.headers.get('content-type', 'no content type')}, not JSON: {exc}",
                                   request=response.request) from exc

    def opened_session(self, session_id: str) -> None:
        self._own_sessions.add(session_id)

    def deleted_session(self, session_id: str) -> None:
        self._own_sessions.discard(session_id)


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The `error` object of an l2o error answer (its body already read); empty for anything else (a proxy's
    page, say)."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return {}
    return error if isinstance(error, dict) else {}


def retry_after(response: httpx.Response) -> float | None:
    """The server's Retry-After in seconds (a number or an HTTP date), if it sent one."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


__all__ = ["APIError", "BaseClient", "RequestOptions", "data_dir", "default_data_dir", "find_api_key", "is_local",
           "limits", "retry_after"]
