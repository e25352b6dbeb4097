"""A training run built from `zoo.train`'s arguments: checked, then made into its programs, data,
evaluation and run record, before any step runs or anything is written.

Options that are objects (`Loop`, `Checkpointing`, `ValidationSplit`, the callbacks) check
themselves when made (`__check_init__`); here are the checks of plain arguments and of how
arguments fit together (a model with the data, the eval data with the metrics).
"""

import functools
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import numpy as np
import optax

from .. import _checks
from ..losses._losses import batched_predictions, resolve_loss
from ..metrics._metrics import resolve_metrics
from ._callbacks import Callback, ProgressBar
from ._checkpointing import Checkpointing, describe_data, run_record
from ._data import (
    check_class_labels,
    check_validation_data,
    checked_dataset,
    inputs_not_finite,
    num_examples,
    split_validation,
    validation_option,
)
from ._epochs import EpochRunner, Loop, epoch_runner
from ._evaluate import Evaluation, current_learning_rate
from ._step import (
    DENSE,
    Programs,
    TrainState,
    UpdateRule,
    accumulating,
    check_accumulate,
    check_precision,
    count_terms,
    dynamic_loss_scaling,
    evaluation_key,
    initial_state,
    make_train_step,
    rule_for,
    validation_key,
    with_precision,
)
from ._strategy import strategy_for

_EXAMPLE = "zoo.train(model, data, epochs=10, batch_size=128)"


def check_model(model) -> None:
    """A model with no floating array has nothing to train (`None`, data passed as the model)."""
    if not isinstance(model, eqx.Module) or not jax.tree.leaves(
        eqx.filter(model, eqx.is_inexact_array)
    ):
        raise TypeError(
            f"model must be an equinox.Module holding floating arrays to train; got "
            f"{_checks.describe(model)}. For example: zoo.train(zoo.MLP(64, 10, "
            "key=jax.random.key(0)), data)"
        )


def training_key(key):
    """The key of the run: `key`, checked, or `jax.random.key(0)` when it is `None`."""
    if key is None:
        return jax.random.key(0)
    return _checks.key("key", key, example="zoo.train(model, data, key=jax.random.key(0))")


def check_optimizer(optimizer) -> None:
    if not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise TypeError(
            "optimizer must be an optax GradientTransformation such as optax.adam(1e-3) (or a "
            f"zoo.sparse optimizer); got {optimizer!r}."
        )


def check_learning_rate(learning_rate: float | None) -> None:
    if learning_rate is not None and not 0 < learning_rate < float("inf"):
        raise ValueError(
            f"the optimizer's learning rate must be positive and finite; got {learning_rate:.6g}. "
            "For example optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)."
        )


def check_precision_for(rule: UpdateRule, precision: str) -> None:
    if precision != "float32" and rule is not DENSE:
        raise ValueError(
            f"precision={precision!r} does not work with zoo.sparse optimizers yet (their "
            "embedding lookups read the float32 tables); use precision='float32' with them."
        )


def check_reiterable(data, epochs: int) -> None:
    """An iterator (a generator, say) is spent after one pass: refused for several epochs now,
    rather than found empty after the first epoch has trained."""
    if isinstance(data, Iterator) and epochs > 1:
        raise ValueError(
            f"data is a one-shot iterator ({type(data).__name__}), which epochs={epochs} would "
            "exhaust after epoch 1 (a generator can be iterated only once): pass a list of "
            "batches, or an object whose __iter__ starts a new pass each epoch (data must be "
            "re-iterable when epochs > 1)."
        )


def check_eval_data_fits(model: eqx.Module, eval_arrays: dict | None, metrics: dict) -> None:
    """The per-epoch evaluation traced once on one example of `eval_data`, before training, so
    that a wrong shape or a missing array is an error naming `eval_data`, not one after an
    epoch has trained."""
    if eval_arrays is None or not metrics:
        return
    for field in ("x", "y"):
        if field not in eval_arrays:
            raise ValueError(
                f"eval_data must hold inputs under 'x' and targets under 'y' for the metrics "
                f"{list(metrics)}; it has {sorted(eval_arrays)} and no {field!r}. For example "
                "eval_data={'x': test_features, 'y': test_labels}."
            )

    def figures(model, x, y):
        predictions = batched_predictions(model, x, None)
        return [fn(predictions, y) for fn in metrics.values()]

    try:
        eqx.filter_eval_shape(figures, model, eval_arrays["x"][:1], eval_arrays["y"][:1])
    except Exception as error:
        raise ValueError(
            f"eval_data does not fit the model and metrics {list(metrics)}: {error}"
        ) from error
    _check_finite_inputs(eval_arrays["x"])


def _check_finite_inputs(x) -> None:
    """Non-finite eval inputs would stop the run after its first epoch: refused before it."""
    if not np.issubdtype(x.dtype, np.inexact):
        return
    finite = np.isfinite(np.asarray(x)).reshape(len(x), -1).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise inputs_not_finite("eval_data", len(bad), len(x), int(bad[0]))


# Metrics recorded on eval data when a built-in loss is named and `metrics` is not given.
_DEFAULT_METRICS = {
    "cross_entropy": ("cross_entropy", "accuracy"),
    "bce": ("bce", "accuracy"),
    "mse": ("mse", "mae"),
}


class Run(NamedTuple):
    """What the loop needs of a checked run: its state, programs, epochs, evaluation, record."""

    dynamic: TrainState
    programs: Programs
    runner: EpochRunner
    evaluation: Evaluation
    record: dict
    loop: Loop
    callbacks: tuple[Callback, ...]


def built_run(
    model, data, loss, optimizer, epochs, batch_size, key, eval_data, validation_split,
    metrics, eval_fn, callbacks, checkpoint, mesh, precision, loop,
) -> Run:  # fmt: skip
    """Checks `zoo.train`'s arguments and builds the run; writes nothing."""
    epochs = _checks.integer("epochs", epochs, minimum=0, example=_EXAMPLE)
    batch_size = _checks.positive_int("batch_size", batch_size, example=_EXAMPLE)
    check_model(model)
    loop = Loop() if loop is None else _instance("loop", loop, Loop, "zoo.Loop(last_batch='drop')")
    callbacks = checked_callbacks(callbacks)
    if checkpoint is not None:
        _instance("checkpoint", checkpoint, Checkpointing, "zoo.Checkpointing('runs/x')")
    if eval_fn is not None and not callable(eval_fn):
        raise TypeError(
            f"eval_fn must be callable or None; got {eval_fn!r}. For example "
            "eval_fn=lambda model: {'score': float(score(model))}"
        )
    check_reiterable(data, epochs)
    split = validation_option(validation_split)
    if split is not None:
        check_validation_data(data, eval_data)
    check_precision(precision)
    optimizer = optax.adam(1e-3) if optimizer is None else optimizer
    check_optimizer(optimizer)
    rule = rule_for(optimizer, in_place=loop.on_nonfinite == "raise" and mesh is None)
    accumulate = check_accumulate(loop.accumulate, batch_size, rule, loss)
    check_precision_for(rule, precision)
    loss_fn = with_precision(resolve_loss(loss), precision)
    terms = count_terms(loss)
    if precision == "float16":
        optimizer = dynamic_loss_scaling(optimizer)
    if metrics is None:
        metrics = _DEFAULT_METRICS.get(loss, ()) if isinstance(loss, str) else ()
    metric_fns = resolve_metrics(metrics)  # a bad name fails now, not after an epoch
    key = training_key(key)
    if split is not None:
        arrays = checked_dataset(data, argument="data")
        data, eval_data = split_validation(
            arrays, split.fraction, stratify=split.stratify, key=validation_key(key)
        )
    eval_arrays = None if eval_data is None else checked_dataset(eval_data, argument="eval_data")
    check_eval_data_fits(model, eval_arrays, metric_fns)
    make_step = functools.partial(
        make_train_step, loss_fn, optimizer, skip_nonfinite=loop.on_nonfinite == "skip"
    )
    strategy = strategy_for(mesh, batch_size, rule, make_step, loss_fn)

    def init(model: eqx.Module) -> TrainState:
        # optax's schedules mix Python floats with int32 counts (as in the step's update).
        with jax.numpy_dtype_promotion("standard"):
            opt_state = optimizer.init(rule.params(model))
        return initial_state(model, opt_state, key)

    train_step = make_step(accumulating(rule, accumulate, terms))
    dynamic, static, train_step = strategy.state(init, model, train_step)
    check_learning_rate(current_learning_rate(dynamic.opt_state))
    programs = Programs(train_step, static, batch_size)
    runner = epoch_runner(
        data, programs, batch_size, loop.last_batch, loop.fused, loop.steps_per_chunk, strategy
    )
    if loss == "cross_entropy":
        for argument, arrays in (("data", runner.arrays), ("eval_data", eval_arrays)):
            check_class_labels(model, arrays, argument)
    # A built-in loss is evaluated as inference (no dropout); a user's gets a fixed key, which
    # a loss that samples negatives needs.
    eval_key = None if isinstance(loss, str) else evaluation_key(key)
    # Evaluation computes in float32 on the float32 parameters, as `zoo.evaluate` does later:
    # the eval loss and the metrics then describe the same model, the one `train` returns.
    evaluation = Evaluation(
        model,
        eval_arrays,
        resolve_loss(loss),
        terms,
        metric_fns,
        eval_fn,
        int(loop.eval_batch_size),
        eval_key,
    )
    examples = None if runner.arrays is None else num_examples(runner.arrays)
    arguments = {
        # The split first: it decides the data's size, so a change is named as what it is.
        **({} if split is None else split.record()),
        "data": describe_data(examples, runner.steps_per_epoch),
        "batch_size": batch_size,
        "precision": precision,
        "loss": loss,
        "key": key,
        **loop.record(),
    }
    for callback in callbacks:
        arguments |= callback.record()
    record = run_record(arguments, model=dynamic.model, opt_state=dynamic.opt_state)
    return Run(dynamic, programs, runner, evaluation, record, loop, callbacks)


def _instance(name: str, value, cls: type, example: str):
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be a zoo.{cls.__name__}, such as {example}; got {value!r}.")
    return value


def checked_callbacks(callbacks) -> tuple[Callback, ...]:
    """`callbacks` as a tuple of `zoo.Callback`s; `None` is `(zoo.ProgressBar(),)`."""
    if callbacks is None:
        return (ProgressBar(),)
    example = "callbacks=[zoo.EarlyStopping('accuracy', patience=3)]"
    if isinstance(callbacks, Callback) or not isinstance(callbacks, Sequence):
        raise TypeError(f"callbacks must be a list of zoo.Callback; got {callbacks!r}. {example}")
    for callback in callbacks:
        if not isinstance(callback, Callback):
            raise TypeError(
                f"callbacks must hold zoo.Callback objects (subclass zoo.Callback for your "
                f"own); got {callback!r}. For example {example}"
            )
    return tuple(callbacks)
