"""The l2o Python SDK: a client for the l2o service, and torch optimizers that step through it.

    from client import Client, RemoteOptimizer

    l2o = Client()              # L2O_URL (default http://127.0.0.1:8000) and L2O_API_KEY, else the key
                                # file the embedded server writes (<data dir>/admin.key)
    opt = RemoteOptimizer(model.parameters(), optimizer="general-mlp", client=l2o)
    loss.backward(); opt.step(); opt.zero_grad()

`pip install .` brings only what the SDK needs (httpx, httpx-sse, numpy, safetensors, platformdirs, torch), and
importing it never imports the server's dependencies. RemoteOptimizer and LocalOptimizer import torch only when used.
"""

from typing import TYPE_CHECKING

__version__ = "0.1.0"

from client._base import RequestOptions  # noqa: E402
from client._body import AnswerBuffer  # noqa: E402
from client._client import AsyncClient, Client  # noqa: E402
from client._exceptions import *  # noqa: E402,F403
from client._exceptions import __all__ as _errors  # noqa: E402
from client.types import (  # noqa: E402
    Alias,
    CheckpointFile,
    Job,
    JobCurve,
    JobEvent,
    JobProgress,
    JobResult,
    Optimizer,
    PinnedVersion,
    Session,
    SessionState,
    StepResult,
    Version,
)

if TYPE_CHECKING:
    from client.optimizer import LocalOptimizer, RemoteOptimizer


def __getattr__(name: str):
    # The torch optimizers load torch (and, for LocalOptimizer, the kernel) only when asked for.
    if name in ("RemoteOptimizer", "LocalOptimizer"):
        from client import optimizer

        return getattr(optimizer, name)
    raise AttributeError(f"module 'client' has no attribute {name!r}")


__all__ = [
    "Alias", "AnswerBuffer", "AsyncClient", "CheckpointFile", "Client", "Job", "JobCurve", "JobEvent", "JobProgress",
    "JobResult", "LocalOptimizer", "Optimizer", "PinnedVersion", "RemoteOptimizer", "RequestOptions", "Session",
    "SessionState", "StepResult", "Version", *_errors,
]
