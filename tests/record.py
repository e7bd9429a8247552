"""Measurements a test hands to bench/reliability.py (how many cases it sent, what came back), written as
JSON lines to $L2O_RELIABILITY_RECORD when the report runs the suite; a no-op otherwise."""

from __future__ import annotations

import json
import os
from typing import Any


def record(name: str, **values: Any) -> None:
    path = os.environ.get("L2O_RELIABILITY_RECORD")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"name": name, **values}, default=str) + "\n")
