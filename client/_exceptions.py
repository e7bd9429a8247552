"""The SDK's exception tree. It mirrors the server's (service/errors.py): one class per error code.

    L2OError                                  anything the SDK raises on purpose
    └── APIError                              .message .code .detail .request
        ├── APIConnectionError                the server could not be reached, or its answer was lost
        │   └── APITimeoutError
        ├── APIResponseError                  an answer the SDK cannot read (not l2o? a proxy's page?)
        └── APIStatusError                    the server answered with an error; .status_code .response
            ├── BadRequestError               400 bad_request
            │   ├── MalformedBodyError        400 malformed_body
            │   ├── DigestMismatchError       400 digest_mismatch (also raised when a download's bytes
            │   │                                 do not match the digest the server sent)
            │   ├── ClientDisconnectedError   400 client_disconnected (the server's code for a client that hung up)
            │   └── UnprocessableEntityError  422 validation_error
            │       ├── InvalidNameError          422 invalid_name
            │       ├── InvalidReferenceError     422 invalid_reference
            │       ├── InvalidCheckpointError    422 invalid_checkpoint
            │       ├── InvalidGradientsError     422 invalid_gradients
            │       └── SessionTooLargeError      422 session_too_large
            ├── AuthenticationError           401 unauthorized
            ├── PermissionDeniedError         403 forbidden
            ├── NotFoundError                 404 not_found
            │   ├── SessionNotFoundError      404 session_not_found
            │   │   └── SessionLostError      a session this client created and used is gone: the server
            │   │                                 restarted and lost it; resume from the last state_dict()
            │   └── JobNotFoundError          404 job_not_found
            ├── MethodNotAllowedError         405 method_not_allowed
            ├── RequestTimeoutError           408 request_timeout (the request did not arrive in time)
            ├── ConflictError                 409 conflict
            │   ├── VersionInUseError         409 version_in_use
            │   ├── StepConflictError         409 step_conflict (.expected: the step the server expects)
            │   ├── StateMismatchError        409 state_mismatch
            │   └── JobFinishedError          409 job_finished
            ├── SessionExpiredError           410 session_expired
            ├── PayloadTooLargeError          413 payload_too_large
            ├── UnsupportedMediaTypeError     415 unsupported_media_type
            ├── RateLimitError                429 rate_limited
            │   └── TooManySessionsError      429 too_many_sessions
            ├── InternalServerError           500 internal_error (and any other 5xx)
            └── ServiceUnavailableError       503 service_unavailable
                ├── DatabaseNotReadyError     503 database_not_ready
                └── AtCapacityError           503 at_capacity

An error answer is turned into the class of its `code`; a code this SDK does not know yet falls back to
the class of its HTTP status, so a newer server still raises something precise.
"""

from __future__ import annotations

from typing import Any

import httpx


class L2OError(Exception):
    """The base of every error the SDK raises."""


class APIError(L2OError):
    code: str = "api_error"

    def __init__(self, message: str, *, request: httpx.Request | None = None, code: str | None = None,
                 detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.request = request
        self.detail = detail
        if code is not None:
            self.code = code


class APIConnectionError(APIError):
    code = "connection_error"


class APITimeoutError(APIConnectionError):
    code = "timeout"


class APIResponseError(APIError):
    code = "unreadable_response"


class APIStatusError(APIError):
    http_status: int = 0  # the status the server sends this code with

    def __init__(self, message: str, *, response: httpx.Response, code: str | None = None,
                 detail: Any = None) -> None:
        super().__init__(message, request=response.request, code=code, detail=detail)
        self.response = response
        self.status_code = response.status_code

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status_code} {self.code})"


class BadRequestError(APIStatusError):
    http_status = 400
    code = "bad_request"


class MalformedBodyError(BadRequestError):
    code = "malformed_body"


class DigestMismatchError(BadRequestError):
    code = "digest_mismatch"


class ClientDisconnectedError(BadRequestError):
    code = "client_disconnected"


class UnprocessableEntityError(BadRequestError):
    http_status = 422
    code = "validation_error"


class InvalidNameError(UnprocessableEntityError):
    code = "invalid_name"


class InvalidReferenceError(UnprocessableEntityError):
    code = "invalid_reference"


class InvalidCheckpointError(UnprocessableEntityError):
    code = "invalid_checkpoint"


class InvalidGradientsError(UnprocessableEntityError):
    code = "invalid_gradients"


class SessionTooLargeError(UnprocessableEntityError):
    code = "session_too_large"


class AuthenticationError(APIStatusError):
    http_status = 401
    code = "unauthorized"


class PermissionDeniedError(APIStatusError):
    http_status = 403
    code = "forbidden"


class NotFoundError(APIStatusError):
    http_status = 404
    code = "not_found"


class SessionNotFoundError(NotFoundError):
    code = "session_not_found"


class SessionLostError(SessionNotFoundError):
    """Raised instead of SessionNotFoundError for a session this client created and has stepped: it
    existed, so the server lost it (a restart with the in-memory session store)."""


class JobNotFoundError(NotFoundError):
    code = "job_not_found"


class MethodNotAllowedError(APIStatusError):
    http_status = 405
    code = "method_not_allowed"


class RequestTimeoutError(APIStatusError):
    http_status = 408
    code = "request_timeout"


class ConflictError(APIStatusError):
    http_status = 409
    code = "conflict"


class VersionInUseError(ConflictError):
    code = "version_in_use"


class StepConflictError(ConflictError):
    code = "step_conflict"

    @property
    def expected(self) -> int | None:
        """The step number the server expects next."""
        return self.detail.get("expected") if isinstance(self.detail, dict) else None


class StateMismatchError(ConflictError):
    code = "state_mismatch"


class JobFinishedError(ConflictError):
    code = "job_finished"


class SessionExpiredError(APIStatusError):
    http_status = 410
    code = "session_expired"


class PayloadTooLargeError(APIStatusError):
    http_status = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(APIStatusError):
    http_status = 415
    code = "unsupported_media_type"


class RateLimitError(APIStatusError):
    http_status = 429
    code = "rate_limited"


class TooManySessionsError(RateLimitError):
    code = "too_many_sessions"


class InternalServerError(APIStatusError):
    http_status = 500
    code = "internal_error"


class ServiceUnavailableError(APIStatusError):
    http_status = 503
    code = "service_unavailable"


class DatabaseNotReadyError(ServiceUnavailableError):
    code = "database_not_ready"


class AtCapacityError(ServiceUnavailableError):
    code = "at_capacity"


def _family(cls: type[APIStatusError]) -> list[type[APIStatusError]]:
    return [cls] + [c for sub in cls.__subclasses__() for c in _family(sub)]


# SessionLostError shares its code with SessionNotFoundError; the client decides between them.
BY_CODE: dict[str, type[APIStatusError]] = {
    c.code: c for c in _family(APIStatusError)[1:] if c is not SessionLostError}
# Each status's most general class: the fallback for a code this SDK does not know.
BY_STATUS: dict[int, type[APIStatusError]] = {c.http_status: c for c in (
    BadRequestError, UnprocessableEntityError, AuthenticationError, PermissionDeniedError, NotFoundError,
    MethodNotAllowedError, RequestTimeoutError, ConflictError,
    SessionExpiredError, PayloadTooLargeError, UnsupportedMediaTypeError, RateLimitError, InternalServerError,
    ServiceUnavailableError)}


def error_class(status: int, code: str | None) -> type[APIStatusError]:
    """The class for an error answer: by its code when the status is the one that code comes with (a proxy's
    502 is a 502 whatever its body says), else by its status, else the nearest family."""
    cls = BY_CODE.get(code or "")
    if cls is not None and cls.http_status == status:
        return cls
    if status in BY_STATUS:
        return BY_STATUS[status]
    if status >= 500:
        return InternalServerError
    return BadRequestError if 400 <= status < 500 else APIStatusError


__all__ = sorted(name for name, obj in list(globals().items())
                 if isinstance(obj, type) and issubclass(obj, L2OError))
