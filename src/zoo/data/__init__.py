"""Datasets as plain dicts of NumPy arrays: `{"x": float32 (n, ...), "y": int32 (n,)}`."""

from ._digits import digits as digits
from ._download import DatasetNotFoundError as DatasetNotFoundError
from ._mnist import mnist as mnist
