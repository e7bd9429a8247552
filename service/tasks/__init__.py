"""Optimizee task families. A family is a seeded source of instances evaluated a batch at a time."""

from __future__ import annotations

from typing import Any

from service.tasks.base import SPLITS, Footprint, TaskBatch, TaskFamily
from service.tasks.conv import ConvFamily
from service.tasks.mixture import MixtureFamily
from service.tasks.mlp import LogisticFamily, MLPFamily
from service.tasks.quadratic import QuadraticFamily

FAMILIES: dict[str, type] = {
    "quadratic": QuadraticFamily,
    "mlp": MLPFamily,
    "logistic": LogisticFamily,
    "conv": ConvFamily,
    "mixture": MixtureFamily,
}


def make_family(name: str, **params: Any) -> TaskFamily:
    """A family by name; unknown names or parameters raise ValueError naming them."""
    try:
        cls = FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown task family {name!r}; known: {', '.join(sorted(FAMILIES))}") from None
    try:
        return cls(**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for family {name!r}: {exc}") from exc


__all__ = ["FAMILIES", "SPLITS", "ConvFamily", "Footprint", "LogisticFamily", "MLPFamily", "MixtureFamily",
           "QuadraticFamily", "TaskBatch", "TaskFamily", "make_family"]
