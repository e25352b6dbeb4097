"""Shared jaxtyping aliases, so that every module spells shapes and dtypes the same way."""

from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

import equinox as eqx
import numpy as np
from jax.typing import DTypeLike
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar

#: A dataset: named, equal-length arrays whose leading axis indexes examples.
Dataset: TypeAlias = Mapping[str, ArrayLike]
#: One batch drawn from a :data:`Dataset`, as device arrays.
Batch: TypeAlias = Mapping[str, Array]
#: A loss: ``loss(model, batch, key) -> scalar``, the batch holding many examples.
LossFn: TypeAlias = Callable[[eqx.Module, Batch, PRNGKeyArray | None], Scalar]
#: An optimizer: an optax `GradientTransformation`, or a sparse-embedding one from `zoo.sparse`.
Optimizer: TypeAlias = Any
#: An integer argument: a Python or NumPy int (`zoo._checks` refuses a bool).
IntLike: TypeAlias = int | np.integer
#: A real-number argument: a Python or NumPy float or int (`zoo._checks` refuses nan and inf).
RealLike: TypeAlias = float | int | np.floating | np.integer
#: Any pytree.
PyTree: TypeAlias = Any

__all__ = [
    "Array",
    "ArrayLike",
    "Batch",
    "DTypeLike",
    "Dataset",
    "Float",
    "Int",
    "IntLike",
    "LossFn",
    "Optimizer",
    "PRNGKeyArray",
    "PyTree",
    "RealLike",
    "Scalar",
]
