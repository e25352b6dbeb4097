"""The data of a run: datasets checked, gathered and placed, and the rows held out for validation.

A dataset is named, equal-length arrays whose leading axis is the example; training, the
per-epoch evaluation and `zoo.evaluate` all check and batch it here. Below the checks:
`ValidationSplit` and `split_validation`, which hold out part of the training data as the eval
set.
"""

import math
from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int, PRNGKeyArray

from .. import _checks
from .._custom_types import Batch, Dataset, RealLike


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


def check_class_labels(model: eqx.Module, arrays: dict | None, argument: str) -> bool:
    """Labels for cross-entropy must index the model's outputs; checked once, on the host.
    Returns whether every label was checked (else the loss checks them in the step).

    (Inside the compiled step an out-of-range label would only show as a wrong loss.)
    """
    if arrays is None or "x" not in arrays or "y" not in arrays:
        return False
    labels = arrays["y"]
    if not np.issubdtype(labels.dtype, np.integer):
        return False  # the loss itself raises a TypeError that says so, when traced
    try:
        outputs = eqx.filter_eval_shape(lambda m, x: m(x), model, arrays["x"][0])
    except Exception:
        return False
    classes = outputs.shape[-1] if outputs.ndim else 1
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= classes:
        raise ValueError(
            f"{argument}['y'] must hold class labels in [0, {classes}) for a model with {classes} "
            f"outputs; got labels from {low} to {high}. Remap the labels, or build the model "
            f"with out_size={high + 1}."
        )
    return True


# Holding out part of the training data as the eval set: deterministic by key, disjoint.


class ValidationSplit(eqx.Module):
    """Holds out a fraction of the training data as the eval set (`validation_split=`).

    **Arguments:**

    - `fraction`: in (0, 1), of `data` (a mapping of arrays). The rows are drawn by the
      training key (its own stream, apart from the shuffles), so the same key holds out the
      same rows; both sides are disjoint.
    - `stratify`: hold out that fraction of each class of `data["y"]` (integer labels), so
      both sides keep the class proportions.

    Both are in the run record: a resumed run holds out the same rows, or is refused.
    `zoo.train(..., validation_split=0.1)` is `ValidationSplit(0.1)`.

    !!! example

        ```python
        model = zoo.MLP(in_size=64, out_size=10, hidden=(32,), key=jax.random.key(0))
        model, history = zoo.train(model, zoo.data.digits("train"), epochs=2,
                                   validation_split=zoo.ValidationSplit(0.1, stratify=True))
        print(history["eval"]["loss"][-1])
        ```
    """

    fraction: RealLike
    stratify: bool = False

    def __check_init__(self):
        if not _checks.is_real(self.fraction):
            raise TypeError(f"validation_split must be a float in (0, 1); got {self.fraction!r}.")
        if not 0 < self.fraction < 1:
            raise ValueError(
                f"validation_split must lie strictly between 0 and 1 (the fraction of data held "
                f"out for evaluation); got {self.fraction!r}. For example validation_split=0.1."
            )
        _checks.boolean("stratify", self.stratify, example="zoo.ValidationSplit(0.1, True)")

    def record(self) -> dict:
        return {"validation_split": float(self.fraction), "stratify": self.stratify}


def validation_option(split) -> "ValidationSplit | None":
    """`validation_split` as a `ValidationSplit` (a float is one without stratifying)."""
    return split if split is None or isinstance(split, ValidationSplit) else ValidationSplit(split)


def check_validation_data(data, eval_data) -> None:
    """A split needs a mapping of arrays to split, and no other eval set."""
    if eval_data is not None:
        raise ValueError(
            "pass either eval_data or validation_split, not both: validation_split takes the "
            "eval set out of data."
        )
    if not hasattr(data, "keys"):
        raise ValueError(
            "validation_split needs data as a mapping of arrays such as {'x': ..., 'y': ...}, "
            "not an iterable of batches; split the data yourself and pass eval_data."
        )


def split_validation(
    arrays: dict, fraction: RealLike, *, stratify: bool, key: PRNGKeyArray
) -> tuple[dict, dict]:
    """`(train, validation)`: disjoint rows of `arrays`, the validation rows drawn by `key`.

    With `stratify`, each class of `arrays["y"]` contributes `round(fraction * its count)`
    rows, so both sides keep the class proportions.
    """
    fraction = float(fraction)  # a NumPy float32 is a float too (zoo._checks)
    count = num_examples(arrays)
    order = np.asarray(jax.random.permutation(key, count))
    if stratify:
        held = _stratified(order, _class_labels(arrays), fraction)
    else:
        held = order[: _held_count(count, fraction)]
    if len(held) in (0, count):
        side = "the eval set" if len(held) == 0 else "the training set"
        raise ValueError(
            f"validation_split={fraction} of {count} examples leaves {side} empty; use a "
            f"fraction such that both sides keep at least one example (e.g. 0.1 of more data)."
        )
    is_held = np.zeros(count, bool)
    is_held[held] = True
    # Both sides keep the data's row order; the trainer shuffles by key each epoch anyway.
    train_rows, held_rows = np.flatnonzero(~is_held), np.flatnonzero(is_held)
    return host_rows(arrays, train_rows), host_rows(arrays, held_rows)


def _held_count(count: int, fraction: float) -> int:
    return math.floor(count * fraction + 0.5)


def _class_labels(arrays: dict) -> np.ndarray:
    labels = np.asarray(arrays["y"]) if "y" in arrays else None
    if labels is None or labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            "stratify=True needs integer class labels under data['y'], one per example; "
            "for other targets use stratify=False."
        )
    return labels


def _stratified(order: np.ndarray, labels: np.ndarray, fraction: float) -> np.ndarray:
    shuffled = labels[order]
    parts = []
    for label in np.unique(labels):
        members = order[shuffled == label]  # this class's rows, in the drawn order
        parts.append(members[: _held_count(len(members), fraction)])
    return np.concatenate(parts)
