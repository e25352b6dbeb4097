"""What a run measures and records: `zoo.evaluate`, the per-epoch evaluation, the history, and its
plot.

`zoo.evaluate` gives the metrics of a model over a whole dataset, in one compiled program;
`Evaluation` the figures each epoch of `zoo.train` records in `history["eval"]`. Below them:
the history itself (plain lists of per-epoch figures) and `zoo.plot_history`, which draws it.
"""

import functools
import math
import pathlib
import warnings
from collections.abc import Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array

from .. import _checks
from .._custom_types import Dataset, IntLike, PyTree
from ..losses import LOSSES
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
from ._step import StepTotals, injected_learning_rate, loss_scale

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


# The training history: plain lists of per-epoch figures, ready for `json.dump`.


def new_history() -> dict:
    return {"epoch": [], "step": [], "time": [], "train": {}, "eval": {}}


def record_epoch(
    history: dict,
    *,
    epoch: int,
    step: int,
    seconds: float,
    totals: StepTotals,
    opt_state: PyTree,
    eval_metrics: dict[str, float],
    grad_norm: bool,
) -> None:
    """Appends one epoch's figures to `history` (in place); the mean gradient norm with
    `grad_norm` (`zoo.Loop(grad_norm=True)`)."""
    history["epoch"].append(epoch)
    history["step"].append(step)
    history["time"].append(seconds)
    train = {"loss": float(totals.loss) / max(int(totals.examples), 1)}
    if grad_norm:
        train["grad_norm"] = float(totals.grad_norm) / max(int(totals.steps), 1)
    train["nonfinite_steps"] = int(totals.nonfinite_steps)
    if int(totals.steps) == 0:
        # Nothing trained: a loss of 0.0 would read as a perfect epoch.
        train |= {name: float("nan") for name in ("loss", "grad_norm") if name in train}
        warnings.warn(
            f"epoch {epoch}: all of its {int(totals.nonfinite_steps)} steps had a non-finite loss "
            "or gradient and were skipped (on_nonfinite='skip'), so nothing trained; its loss "
            "is recorded as nan. Lower the learning rate, clip gradients, or check the data "
            "for non-finite values.",
            RuntimeWarning,
            stacklevel=2,
        )
    learning_rate = current_learning_rate(opt_state)
    if learning_rate is not None:
        train["learning_rate"] = learning_rate
    scale = loss_scale(opt_state)
    if scale is not None:  # float16: the scale at the epoch's end, and the steps it skipped
        train["loss_scale"] = float(scale)
        train["loss_scale_overflows"] = int(opt_state.overflows)
    for name, value in train.items():
        history["train"].setdefault(name, []).append(value)
    for name, value in eval_metrics.items():
        history["eval"].setdefault(name, []).append(value)


def current_learning_rate(opt_state: PyTree) -> float | None:
    """The learning rate of an optimizer wrapped in `optax.inject_hyperparams`, else None."""
    learning_rate = injected_learning_rate(opt_state)
    return None if learning_rate is None else float(learning_rate)


# Training curves as a PNG, drawn with matplotlib's object API.
#
# matplotlib is imported on the first plot, not with zoo, and `matplotlib.figure.Figure` draws
# straight to a file: no global backend is chosen and no pyplot state is touched, so a notebook
# user's own plots keep showing.


# The same series, whatever their names: recall@K equals HR@K with one held-out item per user.
_SAME_TOLERANCE = 1e-12
# Losses spanning more than this factor are drawn on a log scale.
_LOG_SPAN = 20


def plot_history(history: dict, path: str | pathlib.Path) -> pathlib.Path:
    """Draws a run's history into a PNG at `path`: one panel per distinct figure, by epoch.

    The first panel holds the losses: the training loss and, on the same axis, each eval
    figure named after a loss (`cross_entropy`, `mse`, `bce` or another name of
    `zoo.losses.LOSSES`), so that over- and under-fitting show at a glance (on a log scale when
    the losses span more than a factor of 20). Every other eval metric gets a panel of its
    own, except that metrics with identical values every epoch (HR@10 and recall@10 with one
    held-out item per user) share one. Epochs are whole numbers on the x axis. With early
    stopping (`history["best_epoch"]`), a dotted line marks the epoch whose model was
    returned. When `history["baselines"]` maps baseline names to figures (as `zoo train
    recommender` records the popularity and random baselines), each metric's panel also
    draws the baselines' figure as a dashed line.

    **Arguments:**

    - `history`: the history returned by [`zoo.train`][].
    - `path`: where to write the PNG.

    **Returns:**

    The path written.

    **Example:**

    ```python
    import jax, optax, zoo
    model = zoo.MLP(in_size=64, out_size=10, hidden=(32,), key=jax.random.key(0))
    _, history = zoo.train(model, zoo.data.digits("train"), epochs=3, batch_size=64,
                           eval_data=zoo.data.digits("test"), key=jax.random.key(1))
    zoo.plot_history(history, "training_curve.png")
    ```
    """
    path = pathlib.Path(path)
    history_figure(history).savefig(path, dpi=100)
    return path


def history_figure(history: dict):
    """The `matplotlib.figure.Figure` that `plot_history` saves."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = history["epoch"]
    losses, metrics = _panels(history)
    count = 1 + len(metrics)
    columns = count if count <= 3 else (2 if count == 4 else 3)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(4.2 * columns, 3.3 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    _draw_losses(axes[0], epochs, losses)
    for axis, (names, values) in zip(axes[1:], metrics, strict=False):
        axis.plot(epochs, values, marker="o", markersize=3, label="model")
        _draw_baselines(axis, history.get("baselines", {}), names[0])
        axis.set_title("eval " + " = ".join(names))
    for axis in axes[count:]:
        axis.set_visible(False)
    for axis in axes[:count]:
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        if "best_epoch" in history:
            axis.axvline(history["best_epoch"], color="0.35", linestyle=":", label="best epoch")
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize="small")
    return figure


def _panels(history: dict) -> tuple[dict[str, list], list[tuple[list[str], list]]]:
    """The loss curves by label, and the other eval metrics grouped by identical values."""
    losses = {"train loss": history["train"]["loss"]}
    metrics: list[tuple[list[str], list]] = []
    for name, values in history["eval"].items():
        if name in LOSSES or name == "loss":
            losses[f"eval {name}"] = values
            continue
        same = next((group for group in metrics if _same(group[1], values)), None)
        if same is None:
            metrics.append(([name], values))
        else:
            same[0].append(name)
    return losses, metrics


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=_SAME_TOLERANCE, abs_tol=_SAME_TOLERANCE)
        for x, y in zip(a, b, strict=True)
    )


def _draw_losses(axis, epochs: list, losses: dict[str, list]) -> None:
    for label, values in losses.items():
        axis.plot(epochs, values, marker="o", markersize=3, label=label)
    axis.set_title("loss")
    finite = [value for values in losses.values() for value in values if math.isfinite(value)]
    if finite and min(finite) > 0 and max(finite) > _LOG_SPAN * min(finite):
        axis.set_yscale("log")  # else the first epochs' loss flattens the rest into a line


def _draw_baselines(axis, baselines: dict[str, dict[str, float]], metric: str) -> None:
    present = [(name, figures[metric]) for name, figures in baselines.items() if metric in figures]
    for colour, (name, value) in enumerate(present, start=1):
        axis.axhline(value, linestyle="--", color=f"C{colour}", label=name)
