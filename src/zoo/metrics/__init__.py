"""Metrics for `zoo.evaluate` and `zoo.train(..., metrics=...)`: per-example functions by name."""

from ._metrics import (
    DIRECTIONS as DIRECTIONS,
    METRICS as METRICS,
    accuracy as accuracy,
    direction as direction,
    mae as mae,
)
