"""The service's one error tree. Every error knows its HTTP status and a stable machine-readable code.

    L2OError                      500 internal_error
    ├── BadRequest                400 bad_request
    │   ├── ValidationError       422 validation_error
    │   │   ├── InvalidName       422 invalid_name
    │   │   ├── InvalidReference  422 invalid_reference
    │   │   ├── InvalidCheckpoint 422 invalid_checkpoint
    │   │   ├── InvalidGradients  422 invalid_gradients
    │   │   └── SessionTooLarge   422 session_too_large
    │   ├── MalformedBody         400 malformed_body
    │   ├── DigestMismatch        400 digest_mismatch
    │   └── ClientDisconnected    400 client_disconnected (logged and counted; nobody reads the answer)
    ├── Unauthorized              401 unauthorized
    ├── Forbidden                 403 forbidden
    ├── NotFound                  404 not_found
    │   ├── SessionNotFound       404 session_not_found
    │   └── JobNotFound           404 job_not_found
    ├── MethodNotAllowed          405 method_not_allowed
    ├── RequestTimeout            408 request_timeout
    ├── Conflict                  409 conflict
    │   ├── VersionInUse          409 version_in_use
    │   ├── StepConflict          409 step_conflict
    │   ├── StateMismatch         409 state_mismatch
    │   └── JobFinished           409 job_finished
    ├── SessionExpired            410 session_expired
    ├── PayloadTooLarge           413 payload_too_large
    ├── UnsupportedMediaType      415 unsupported_media_type
    ├── RateLimited               429 rate_limited
    │   └── TooManySessions       429 too_many_sessions
    └── ServiceUnavailable        503 service_unavailable
        ├── DatabaseNotReady      503 database_not_ready
        └── AtCapacity            503 at_capacity

One FastAPI handler (service.app) renders any of them as

    {"error": {"code": "...", "message": "...", "detail": ...}}

The SDK mirrors this tree in client/_exceptions.py, keyed by `code` (tests/test_errors.py holds the two
to the same codes and statuses). This module imports nothing from the web
framework, so services, workers and the CLI raise the same errors.
"""

from __future__ import annotations

import math
from typing import Any


class L2OError(Exception):
    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, detail: Any = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "detail": self.detail}}


class BadRequest(L2OError):
    status = 400
    code = "bad_request"


class ValidationError(BadRequest):
    status = 422
    code = "validation_error"


class InvalidName(ValidationError):
    code = "invalid_name"


class InvalidReference(ValidationError):
    code = "invalid_reference"


class InvalidCheckpoint(ValidationError):
    code = "invalid_checkpoint"


class DigestMismatch(BadRequest):
    code = "digest_mismatch"


class Unauthorized(L2OError):
    status = 401
    code = "unauthorized"

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(message, **kwargs)


class Forbidden(L2OError):
    status = 403
    code = "forbidden"


class NotFound(L2OError):
    status = 404
    code = "not_found"


class MethodNotAllowed(L2OError):
    status = 405
    code = "method_not_allowed"


class RequestTimeout(L2OError):
    status = 408
    code = "request_timeout"


class Conflict(L2OError):
    status = 409
    code = "conflict"


class VersionInUse(Conflict):
    code = "version_in_use"


class SessionExpired(L2OError):
    status = 410
    code = "session_expired"


class PayloadTooLarge(L2OError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(L2OError):
    status = 415
    code = "unsupported_media_type"


class RateLimited(L2OError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        if retry_after is not None:
            # Whole seconds (RFC 9110), rounded up: a client that waits what it is told is not refused again.
            kwargs.setdefault("headers", {"Retry-After": str(max(1, math.ceil(retry_after)))})
        super().__init__(message, **kwargs)


class ServiceUnavailable(L2OError):
    status = 503
    code = "service_unavailable"


class DatabaseNotReady(ServiceUnavailable):
    code = "database_not_ready"


# --- sessions and steps -------------------------------------------------------------------------------

class MalformedBody(BadRequest):
    code = "malformed_body"


class ClientDisconnected(BadRequest):
    code = "client_disconnected"


class InvalidGradients(ValidationError):
    code = "invalid_gradients"


class SessionTooLarge(ValidationError):
    code = "session_too_large"


class SessionNotFound(NotFound):
    code = "session_not_found"


class StepConflict(Conflict):
    code = "step_conflict"


class StateMismatch(Conflict):
    code = "state_mismatch"


class TooManySessions(RateLimited):
    code = "too_many_sessions"


class AtCapacity(ServiceUnavailable):
    code = "at_capacity"


# --- meta-training jobs -------------------------------------------------------------------------------

class JobNotFound(NotFound):
    code = "job_not_found"


class JobFinished(Conflict):
    code = "job_finished"


def by_status(status: int) -> type[L2OError]:
    """The most general error of the tree sent with `status` (for errors raised by the framework, which
    know only a status): e.g. 404 NotFound; a status the tree does not use falls back to its class."""
    family = [L2OError]
    for cls in family:
        family.extend(cls.__subclasses__())
    found = next((cls for cls in family if cls.status == status), None)
    return found or (L2OError if status >= 500 else BadRequest)
