"""Datasets as plain dicts of NumPy arrays: `{"x": float32 (n, ...), "y": int32 (n,)}`."""

from ._digits import digits as digits
