"""Holding out part of the training data as the eval set: deterministic by key, disjoint."""

import math

import equinox as eqx
import jax
import numpy as np
from jaxtyping import PRNGKeyArray

from .. import _checks
from .._custom_types import RealLike
from ._dataset import host_rows, num_examples


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
