"""The API grouped by resource, as `client.optimizers`, `client.sessions` and `client.jobs`."""

from client.resources.jobs import AsyncJobs, Jobs
from client.resources.optimizers import AsyncOptimizers, Optimizers
from client.resources.sessions import AsyncSessions, Sessions

__all__ = ["AsyncJobs", "AsyncOptimizers", "AsyncSessions", "Jobs", "Optimizers", "Sessions"]
