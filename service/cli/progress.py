"""The progress bar of `l2o train` and `l2o jobs watch`: the SDK's bar, bound to a total, with an ETA."""

from __future__ import annotations

from typing import TextIO

from client._progress import ProgressBar as _Bar
from client._progress import fmt_seconds

__all__ = ["ProgressBar", "fmt_seconds"]


class ProgressBar(_Bar):
    def __init__(self, total: int, *, width: int = 30, stream: TextIO | None = None) -> None:
        super().__init__(width=width, stream=stream)
        self.total = max(int(total), 1)

    def update(self, done: int, *, elapsed: float | None = None, extra: str = "") -> None:
        frac = min(max(done / self.total, 0.0), 1.0)
        eta = elapsed * (1 - frac) / frac if elapsed is not None and frac > 0 else None
        self.draw(done, self.total, elapsed=elapsed, eta=eta, note=extra)
