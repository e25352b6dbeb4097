"""Metrics for `zoo.evaluate` and `zoo.train(..., metrics=...)`: per-example functions by name."""

from ._metrics import METRICS as METRICS, accuracy as accuracy, mae as mae
