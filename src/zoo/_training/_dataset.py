"""Checking and batching datasets: named, equal-length arrays whose leading axis is the example."""

from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

from .. import _checks
from .._custom_types import Batch, Dataset


def checked_dataset(data: Dataset, *, argument: str = "data") -> dict[str, np.ndarray | Array]:
    """`data` as a dict of arrays, after checking it is a non-empty, non-ragged dataset.

    NumPy-convertible values become NumPy arrays; JAX arrays stay where they are.
    """
    if not isinstance(data, Mapping):
        raise TypeError(
            f"{argument} must be a mapping of equal-length arrays such as "
            f"{{'x': features, 'y': labels}}; got {type(data).__name__}."
        )
    if not data:
        raise ValueError(f"{argument} is empty: it needs arrays such as {{'x': ..., 'y': ...}}.")
    arrays = {name: _as_array(value, f"{argument}[{name!r}]") for name, value in data.items()}
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(
            f"{argument} must hold arrays of equal length (one row per example); got lengths "
            + ", ".join(f"{name}={length}" for name, length in lengths.items())
            + "."
        )
    if next(iter(lengths.values())) == 0:
        raise ValueError(f"{argument} has no examples: every array has length 0.")
    return arrays


def _as_array(value, name: str) -> np.ndarray | Array:
    if isinstance(value, jax.Array):
        # Already a numeric, rectangular array: keep it where it is, rather than copying a
        # batch that is on the device to the host and back on every step.
        return value if value.ndim else _scalar_error(name)
    try:
        array = np.asarray(value)
    except ValueError as error:  # NumPy's message for ragged nested lists
        raise ValueError(f"{name} is ragged: its rows must all have the same shape.") from error
    _checks.numeric_array(name, array, example="np.asarray(column, np.float32)")
    # Sent to the device as is: an int64 column must fit what JAX stores it as (int32).
    array = _checks.fits_int32(name, array)
    return array if array.ndim else _scalar_error(name)


def _scalar_error(name: str):
    raise ValueError(f"{name} must have a leading example axis; got a scalar.")


def num_examples(data: Mapping[str, np.ndarray | Array]) -> int:
    return len(next(iter(data.values())))


def to_device(data: Mapping[str, np.ndarray | jax.Array]) -> dict[str, Array]:
    return {name: jnp.asarray(array) for name, array in data.items()}


def gather(data: Mapping[str, Array], indices: Int[Array, " batch"]) -> Batch:
    """The examples at `indices`, from every array of `data`."""
    return {name: jnp.take(array, indices, axis=0) for name, array in data.items()}


def host_rows(
    data: Mapping[str, np.ndarray | jax.Array], indices: np.ndarray
) -> dict[str, np.ndarray | jax.Array]:
    """The examples at `indices`, gathered on the host (the caller sends them to the device)."""
    return {name: array[indices] for name, array in data.items()}


def nbytes(data: Mapping[str, np.ndarray | jax.Array]) -> int:
    return sum(array.nbytes for array in data.values())


def inputs_not_finite(argument: str, bad: int, count: int, first: int) -> ValueError:
    """The error for `bad` of `count` examples of `argument` with NaN or infinite inputs."""
    return ValueError(
        f"{argument}['x'] must be finite; {bad} of {count} examples hold NaN or "
        f"infinite inputs (the first at row {first}), so no metric can be reported. "
        "Drop or fix them, e.g. keep = np.isfinite(x).all(axis=tuple(range(1, x.ndim)))."
    )


def check_class_labels(model: eqx.Module, arrays: dict | None, argument: str) -> None:
    """Labels for cross-entropy must index the model's outputs; checked once, on the host.

    (Inside the compiled step an out-of-range label would only show as a wrong loss.)
    """
    if arrays is None or "x" not in arrays or "y" not in arrays:
        return
    labels = arrays["y"]
    if not np.issubdtype(labels.dtype, np.integer):
        return  # the loss itself raises a TypeError that says so, when traced
    try:
        outputs = eqx.filter_eval_shape(lambda m, x: m(x), model, arrays["x"][0])
    except Exception:
        return
    classes = outputs.shape[-1] if outputs.ndim else 1
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= classes:
        raise ValueError(
            f"{argument}['y'] must hold class labels in [0, {classes}) for a model with {classes} "
            f"outputs; got labels from {low} to {high}. Remap the labels, or build the model "
            f"with out_size={high + 1}."
        )
