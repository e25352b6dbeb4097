"""`zoo.evaluate`: metrics of a model over a whole dataset, in one compiled program."""

import functools
import math
from collections.abc import Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array

from .. import _checks
from .._custom_types import Dataset, IntLike
from ..losses._losses import batched_predictions
from ..metrics._metrics import Metric, resolve_metrics
from ._data import (
    check_class_labels,
    checked_dataset,
    gather,
    inputs_not_finite,
    num_examples,
    to_device,
)

_CLASSIFICATION = {"accuracy", "cross_entropy"}  # metrics whose targets are class labels


def evaluate(
    model: eqx.Module,
    data: Dataset,
    metrics: Sequence[str | Metric] = ("accuracy",),
    *,
    batch_size: IntLike = 1024,
) -> dict[str, float]:
    """Averages per-example metrics of `model` over every example of `data`.

    The model runs without a key (inference: no dropout), batched with `jax.vmap`, in batches of
    `batch_size` inside one compiled program; the last partial batch is padded and masked, so the
    averages are exact.

    **Arguments:**

    - `model`: a model mapping one input `x` to one prediction.
    - `data`: a mapping with inputs under `"x"` and targets under `"y"`.
    - `metrics`: metric names (`"accuracy"`, `"cross_entropy"`, `"mse"`, `"mae"`, `"bce"`) or
      callables `metric(predictions, targets) -> per-example values`.
    - `batch_size`: how many examples run at once.

    **Returns:**

    A dict from metric name to its average over the dataset, as Python floats.

    **Example:**

    ```python
    model = zoo.MLP(in_size=64, out_size=10, hidden=(32,), key=jax.random.key(0))
    zoo.evaluate(model, zoo.data.digits("test"), ["accuracy", "cross_entropy"])
    # {'accuracy': ..., 'cross_entropy': ...}
    ```
    """
    return evaluated(model, data, metrics, batch_size=batch_size, argument="data")


def evaluated(model, data, metrics, *, batch_size, argument: str) -> dict[str, float]:
    """`evaluate`, its errors naming `argument` (`"eval_data"` inside `zoo.train`)."""
    if not callable(model):
        raise TypeError(
            f"model must be a model (an equinox.Module) mapping one input x to a prediction; got "
            f"{_checks.describe(model)}. For example: zoo.evaluate(model, data, ['accuracy'])"
        )
    named = resolve_metrics(metrics)
    arrays = checked_dataset(data, argument=argument)
    for field in ("x", "y"):
        if field not in arrays:
            raise ValueError(
                f"{argument} must hold inputs under 'x' and targets under 'y'; no {field!r}."
            )
    batch_size = _checks.positive_int(
        "batch_size", batch_size, example="zoo.evaluate(model, data, batch_size=1024)"
    )
    if _CLASSIFICATION & set(named):
        # An out-of-range label would only show as a wrong figure, never as an error.
        check_class_labels(model, arrays, argument)
    if not named:
        return {}
    count = num_examples(arrays)
    size = min(batch_size, count)
    num_batches = -(-count // size)
    indices = np.arange(num_batches * size) % count  # pad by wrapping around; masked below
    sums, unearned = _metric_sums(
        model,
        to_device({"x": arrays["x"], "y": arrays["y"]}),
        jnp.asarray(indices),
        count,
        tuple(named.items()),
        size,
    )
    _refuse_unearned(unearned, count, argument)
    return {name: float(total) / count for name, total in zip(named, sums, strict=True)}


def _refuse_unearned(unearned, count: int, argument: str) -> None:
    """A `ValueError` when some prediction was not finite: no metric is reported from NaN
    (an argmax of NaN is class 0, which would score a perfect accuracy on class-0 data)."""
    bad_predictions, first_prediction, bad_inputs, first_input = (int(v) for v in unearned)
    if bad_inputs:
        raise inputs_not_finite(argument, bad_inputs, count, first_input)
    if bad_predictions:
        raise ValueError(
            f"model predictions on {argument} must be finite; {bad_predictions} of {count} "
            "examples got NaN "
            f"or infinite predictions (the first at row {first_prediction}), so no metric can "
            "be reported. Check the model for NaN parameters (a diverged training run)."
        )


@eqx.filter_jit
def _metric_sums(model, data, indices, count, metrics, batch_size):
    batch_starts = jnp.arange(0, indices.shape[0], batch_size)

    def batch_sums(start):
        batch_indices = lax.dynamic_slice_in_dim(indices, start, batch_size)
        batch = gather(data, batch_indices)
        predictions = batched_predictions(model, batch["x"], None)
        rows = start + jnp.arange(batch_size)
        real = rows < count
        sums = tuple(
            jnp.sum(jnp.where(real, fn(predictions, batch["y"]).astype(jnp.float32), 0.0))
            for _, fn in metrics
        )
        unearned = (
            _count_and_first(real & ~_finite_rows(predictions), rows, count),
            _count_and_first(real & ~_finite_rows(batch["x"]), rows, count),
        )
        return sums, unearned

    sums, unearned = lax.map(batch_sums, batch_starts)
    (bad_predictions, first_prediction), (bad_inputs, first_input) = unearned
    return jax.tree.map(jnp.sum, sums), (
        jnp.sum(bad_predictions),
        jnp.min(first_prediction),
        jnp.sum(bad_inputs),
        jnp.min(first_input),
    )


def _finite_rows(values) -> Array:
    """Whether each example (leading axis of every leaf) holds only finite values; integers
    always do."""
    leaves = [leaf for leaf in jax.tree.leaves(values) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    finite = [jnp.all(jnp.isfinite(leaf.reshape(leaf.shape[0], -1)), axis=1) for leaf in leaves]
    return functools.reduce(jnp.logical_and, finite, jnp.ones((), bool))


def _count_and_first(bad: Array, rows: Array, count: int) -> tuple[Array, Array]:
    bad = jnp.broadcast_to(bad, rows.shape)
    return jnp.sum(bad), jnp.min(jnp.where(bad, rows, count))


class Evaluation:
    """The figures each epoch of `zoo.train` records in `history["eval"]`: `"loss"` (the
    training loss on the eval data, weighted by its terms), the metrics, and what `eval_fn`
    returns; built before training, its names known and checked then."""

    def __init__(self, model, eval_arrays, loss_fn, terms, metrics: dict, eval_fn, batch_size, key):
        self._arrays = eval_arrays
        self._loss_fn, self._terms = loss_fn, terms
        self._metrics = metrics if eval_arrays is not None else {}
        self._eval_fn = eval_fn
        self._batch_size = batch_size
        self._key = key
        names = ([] if eval_arrays is None else ["loss"]) + list(self._metrics)
        if eval_fn is not None:
            # Its names are known only by calling it: once, on the untrained model.
            user = list(_checked_eval_figures(eval_fn(model)))
            shadowed = [name for name in user if name in names]
            if shadowed:
                raise ValueError(
                    f"eval_fn returns {shadowed[0]!r}, which zoo.train already records in "
                    f"history['eval'] ({', '.join(map(repr, names))}): a figure of eval_fn may "
                    "not replace a built-in one. Name it otherwise, e.g. "
                    f"{{'my_{shadowed[0]}': ...}}."
                )
            names += user
        self.names = tuple(names)

    def __call__(self, model) -> dict[str, float]:
        figures = {}
        if self._arrays is not None:
            figures["loss"] = loss_over(
                self._loss_fn, self._terms, model, self._arrays, self._batch_size, self._key
            )
            if self._metrics:
                figures |= evaluated(
                    model,
                    self._arrays,
                    self._metrics,
                    batch_size=self._batch_size,
                    argument="eval_data",
                )
        if self._eval_fn is not None:
            figures |= _checked_eval_figures(self._eval_fn(model))
        return figures


def loss_over(loss_fn, terms, model, arrays, batch_size: int, key) -> float:
    """The mean of `loss_fn` over all of `arrays`' examples, each batch weighted by its count
    of terms (`terms(model, batch)`): the loss of the whole set as one batch."""
    count = num_examples(arrays)
    total = weight = 0.0
    for start in range(0, count, batch_size):
        batch = {name: array[start : start + batch_size] for name, array in arrays.items()}
        value, terms_of = _batch_loss(loss_fn, terms, model, to_device(batch), key)
        total, weight = total + value * terms_of, weight + terms_of
    return float(total / max(float(weight), 1.0))


@eqx.filter_jit
def _batch_loss(loss_fn, terms, model, batch, key):
    value = loss_fn(model, batch, key).astype(jnp.float32)
    return value, jnp.asarray(terms(model, batch), jnp.float32)


def _checked_eval_figures(figures) -> dict[str, float]:
    """What `eval_fn` returned, as a dict of finite floats; otherwise an error naming it."""
    example = "eval_fn=lambda model: {'recall@10': 0.31}"
    if not isinstance(figures, Mapping):
        raise TypeError(
            f"eval_fn must return a mapping from names to numbers; got "
            f"{type(figures).__name__}. For example {example}"
        )
    checked = {}
    for name, value in figures.items():
        if not isinstance(name, str) or np.ndim(value) != 0 or not _is_number(value):
            raise TypeError(
                f"eval_fn must return a mapping from names (str) to numbers; got "
                f"{name!r}: {value!r}. For example {example}"
            )
        if not math.isfinite(float(value)):
            raise ValueError(
                f"eval_fn returned {name!r}: {float(value)}, not a finite number: a figure "
                "recorded in the history must be finite. Check the evaluation (non-finite "
                f"scores, an empty split). For example {example}"
            )
        checked[name] = float(value)
    return checked


def _is_number(value) -> bool:
    dtype = np.asarray(value).dtype
    return np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
