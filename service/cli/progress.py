"""A text progress bar for the terminal, shared by `l2o train` and `l2o jobs watch`."""

from __future__ import annotations

import sys
from typing import TextIO


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


class ProgressBar:
    def __init__(self, total: int, *, width: int = 30, stream: TextIO | None = None) -> None:
        self.total = max(int(total), 1)
        self.width = width
        self.stream = stream or sys.stderr

    def update(self, done: int, *, elapsed: float | None = None, extra: str = "") -> None:
        frac = min(max(done / self.total, 0.0), 1.0)
        filled = int(frac * self.width)
        eta = elapsed * (1 - frac) / frac if elapsed is not None and frac > 0 else None
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"\r[{bar}] {done}/{self.total} {fmt_seconds(elapsed)} elapsed, {fmt_seconds(eta)} left {extra}"
        self.stream.write(line.ljust(100)[:160])
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()
