"""Datasets as plain dicts of NumPy arrays.

Classification sets are `{"x": float32 (n, ...), "y": int32 (n,)}`; interaction sets are
[`Interactions`][zoo.data.Interactions], `{"user": int32 (n,), "item": int32 (n,), ...}` with
the raw ids behind the indices.
"""

from ._cleaning import (
    Removed as Removed,
    compact as compact,
    dedupe as dedupe,
    k_core as k_core,
    rating_threshold as rating_threshold,
)
from ._digits import digits as digits
from ._download import DatasetNotFoundError as DatasetNotFoundError
from ._interactions import Interactions as Interactions
from ._loading import from_columns as from_columns, read_interactions as read_interactions
from ._mnist import mnist as mnist
from ._movielens import movielens as movielens
from ._sequences import sequences as sequences
from ._splits import (
    concatenate as concatenate,
    implicit as implicit,
    leave_last_out as leave_last_out,
    leave_one_out as leave_one_out,
    random_holdout as random_holdout,
    temporal_split as temporal_split,
)
from ._synthetic import (
    synthetic_interactions as synthetic_interactions,
    synthetic_movielens as synthetic_movielens,
    synthetic_sequences as synthetic_sequences,
)
