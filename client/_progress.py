"""A one-line text progress bar for `jobs.wait(progress=True)`, drawn on stderr."""

from __future__ import annotations

import sys
from typing import TextIO


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


class ProgressBar:
    def __init__(self, *, width: int = 30, stream: TextIO | None = None) -> None:
        self.width = width
        self.stream = stream or sys.stderr
        self.drawn = False

    def draw(self, done: int, total: int, *, elapsed: float | None = None, eta: float | None = None,
             note: str = "") -> None:
        frac = min(max(done / total, 0.0), 1.0) if total > 0 else 0.0
        filled = int(frac * self.width)
        line = (f"[{'#' * filled}{'-' * (self.width - filled)}] {done}/{total} "
                f"{fmt_seconds(elapsed)} elapsed, {fmt_seconds(eta)} left {note}")
        # \r redraws in place on a terminal; elsewhere (a log file) each update is its own line.
        end = "" if self.stream.isatty() else "\n"
        self.stream.write(("\r" if self.stream.isatty() else "") + line.ljust(100)[:160] + end)
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn and self.stream.isatty():
            self.stream.write("\n")
            self.stream.flush()
