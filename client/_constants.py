"""Timeouts and the retry policy, in one place.

What is retried (see BaseClient.should_retry):

    request                          connection error   429   5xx
    GET, PUT, DELETE                 yes                yes   yes
    a step (POST .../step)           yes                yes   yes   its step number makes a repeat harmless
    any other POST                   only if never sent yes   no    it may have been applied

A 429 is retried after its Retry-After (capped at MAX_RETRY_AFTER); anything else after an exponential
backoff with jitter. A refused request (4xx other than 429) is never retried.
"""

from __future__ import annotations

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "L2O_URL"
KEY_ENV = "L2O_API_KEY"

# Reads take long only for big checkpoints and big steps; a step on a million coordinates is well under this.
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
# The job event stream may be quiet between events (the server sends a keep-alive every 15 s).
STREAM_TIMEOUT = httpx.Timeout(60.0, connect=5.0, read=None)


def stream_timeout(read: float | None) -> httpx.Timeout:
    """STREAM_TIMEOUT with a limit on the wait for each line (None: no limit)."""
    return httpx.Timeout(60.0, connect=STREAM_TIMEOUT.connect, read=read)

# As httpx's default: a burst of threads on one client waits for a connection instead of opening one each.
DEFAULT_MAX_CONNECTIONS = 100
# Under uvicorn's 5 s keep-alive, so that the client drops an idle connection before the server does.
KEEPALIVE_EXPIRY = 4.0

DEFAULT_MAX_RETRIES = 3
INITIAL_RETRY_DELAY = 0.25   # seconds; doubled on each further attempt
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 60.0       # a server asking for a longer wait gets an error instead
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

# The wire types of the step and state endpoints.
SAFETENSORS_TYPE = "application/vnd.l2o.safetensors"
JSON_TYPE = "application/json"
DIGEST_HEADER = "X-L2O-SHA256"
CONFIG_HEADER = "X-L2O-Config"
