"""Pieces shared by every loader: the dataset dict and argument checking."""

from collections.abc import Sequence

import numpy as np
from jaxtyping import Float32, Int32

from .. import _checks


def labelled_dataset(
    x: Float32[np.ndarray, " n *features"], y: Int32[np.ndarray, " n"]
) -> dict[str, np.ndarray]:
    """Packs inputs and labels into zoo's dataset format, `{"x": x, "y": y}`.

    The annotations are the format's contract: float32 inputs, int32 labels, one label per row
    (jaxtyping checks the shared `n` whenever runtime checking is on).
    """
    return {"x": x, "y": y}


def check_split(split: str, allowed: Sequence[str]) -> None:
    """Raises `ValueError` unless `split` is one of `allowed`."""
    _checks.one_of("split", split, allowed)
