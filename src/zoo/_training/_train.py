"""`zoo.train`: a function from (model, data, ...) to (trained model, history).

`built_run` checks the arguments and builds the run (state, programs, epochs, evaluation,
record); then the loop runs each epoch (`_epochs`), evaluates and records it (`_evaluate`),
hands it to the callbacks (`Parts`) and checkpoints it (`_checkpointing`). Both `Parts` and
`built_run` follow the loop, in this file.
"""

import copy
import functools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jaxtyping import PRNGKeyArray

from .. import _checks
from .._custom_types import Dataset, IntLike, LossFn, Optimizer, RealLike
from ..losses._losses import batched_predictions, resolve_loss, with_labels_in_range
from ..metrics._metrics import Metric, resolve_metrics
from ._callbacks import Callback, ChunkInfo, EpochInfo, ProgressBar, RunInfo
from ._checkpointing import (
    Checkpointing,
    Good,
    Saver,
    describe_data,
    interrupted,
    raise_if_not_finite,
    run_record,
    schedule_checked,
)
from ._data import (
    ValidationSplit,
    check_class_labels,
    check_validation_data,
    checked_dataset,
    inputs_not_finite,
    num_examples,
    split_validation,
    validation_option,
)
from ._epochs import EpochRunner, Loop, epoch_runner
from ._evaluate import Evaluation, current_learning_rate, new_history, record_epoch
from ._step import (
    DENSE,
    Programs,
    StepTotals,
    TrainState,
    UpdateRule,
    accumulating,
    check_accumulate,
    check_precision,
    count_terms,
    dynamic_loss_scaling,
    evaluation_key,
    finite_at_start,
    initial_state,
    make_train_step,
    rule_for,
    validation_key,
    with_precision,
)
from ._strategy import strategy_for


def train(
    model: eqx.Module,
    data: Dataset | Iterable[Dataset],
    *,
    loss: str | LossFn = "cross_entropy",
    optimizer: Optimizer | None = None,
    epochs: IntLike = 1,
    batch_size: IntLike = 128,
    key: PRNGKeyArray | None = None,
    eval_data: Dataset | None = None,
    validation_split: RealLike | ValidationSplit | None = None,
    metrics: Sequence[str | Metric] | None = None,
    eval_fn: Callable[[eqx.Module], Mapping[str, float]] | None = None,
    callbacks: Sequence[Callback] | None = None,
    checkpoint: Checkpointing | None = None,
    mesh: Mesh | None = None,
    precision: str = "float32",
    loop: Loop | None = None,
) -> tuple[eqx.Module, dict]:
    """Trains `model` on `data` and returns the trained model and its history.

    A function, not an object: everything training changes lives in one pytree, a
    [`zoo.TrainState`][], and nothing else holds state. When `data` is a mapping of arrays that
    fits in device memory, each chunk of steps (shuffling by key, batch slicing, the steps and
    the loss sums) is one compiled program with its buffers donated, and the host syncs once
    per chunk. Otherwise (or with `zoo.Loop(fused=False)`) a compiled step runs per batch,
    with batches prefetched to the device. Both paths compute the same thing for the same key.

    **Arguments:**

    - `model`: any `equinox.Module`; the loss decides how it is called.
    - `data`: a mapping of equal-length arrays (`{"x": inputs, "y": targets}` for the built-in
      losses), or an iterable of such batches, iterated once per epoch (so with `epochs > 1`
      it must be re-iterable: a list, not a generator).
    - `loss`: `"cross_entropy"` (integer labels), `"mse"`, `"bce"`, or any callable
      `loss(model, batch, key) -> scalar` or `loss(model, batch) -> scalar` (see
      [Write your own loss](../training.md#write-your-own-loss)).
    - `optimizer`: an optax optimizer (default `optax.adam(1e-3)`), or a sparse-embedding
      optimizer from `zoo.sparse`. Wrap in `optax.inject_hyperparams` to have the learning
      rate recorded. With `zoo.sparse.sgd` on the tables (and `on_nonfinite="raise"`, no
      `mesh`), each step adds the tables' update into them during the backward pass (see
      `zoo.sparse.value_and_update`), so a recorded `history["train"]["grad_norm"]` covers
      the rest.
    - `epochs`: passes over `data`.
    - `batch_size`: examples per step.
    - `key`: the training key; shuffling, the loss's per-step keys (e.g. dropout) and the
      validation split derive from it, so the same key gives the same result bit for bit.
      Default `jax.random.key(0)`.
    - `eval_data`: a dataset evaluated after each epoch: `history["eval"]["loss"]` (the loss,
      whatever it is, on the eval data: never an empty evaluation) and the `metrics`. Traced
      through the model before the first step, so that a mismatch is an error at once.
    - `validation_split`: a fraction in (0, 1) of `data` held out as the eval set, or a
      [`zoo.ValidationSplit`][] (to stratify by class); in place of `eval_data`.
    - `metrics`: names or callables for the eval data (see [`zoo.evaluate`][]); by default
      the loss and accuracy for classification losses, MSE and MAE for `"mse"`.
    - `eval_fn`: called as `eval_fn(model)` after each epoch (and once before training, to
      learn its names); the figures of the mapping it returns (names to finite numbers) are
      recorded in `history["eval"]` beside the metrics, and may not reuse their names. For
      evaluations that are not averages over examples, such as ranking metrics.
    - `callbacks`: [`zoo.Callback`][]s called after each chunk and epoch, in order:
      [`zoo.EarlyStopping`][], [`zoo.ModelCheckpoint`][], [`zoo.Logger`][],
      [`zoo.ProgressBar`][], or your own. `None` (default) is `[zoo.ProgressBar()]`; `[]` is
      silent.
    - `checkpoint`: a [`zoo.Checkpointing`][]: where and how often to save training
      checkpoints, and whether to resume from them.
    - `mesh`: a `jax.sharding.Mesh` to train on (see `zoo.distributed`): batches split over its
      `"data"` and `"fsdp"` axes, embedding tables row-sharded over `"model"`, everything else
      replicated (or split over `"fsdp"`). `batch_size` must divide by the batch axes' size.
      With a `zoo.sparse` optimizer and a `"model"` axis, each id is routed to the device that
      holds its row (docs/scaling.md). `None`: one device.
    - `precision`: `"float32"`, or `"bfloat16"` / `"float16"` for mixed precision: parameters
      and optimizer state stay float32, the forward and backward passes compute in the lower
      precision; float16 gets dynamic loss scaling (`history["train"]["loss_scale"]`).
      Evaluation computes in float32, as `zoo.evaluate` does on the returned model. Not
      with `zoo.sparse` optimizers.
    - `loop`: a [`zoo.Loop`][]: the last batch, non-finite steps, fused chunks, the eval
      batch size, and gradient accumulation.

    **Returns:**

    `(model, history)`. `history` holds per-epoch lists: `history["train"]["loss"]`,
    `history["train"]["grad_norm"]` (mean global gradient norm, with
    `zoo.Loop(grad_norm=True)`),
    `history["train"]["learning_rate"]` (that of the epoch's last step, when recorded),
    `history["eval"][metric]`, `history["time"]` (seconds of training per epoch),
    `history["epoch"]` and `history["step"]`; when a callback stopped training,
    `history["stop_reason"]`, its name (e.g. `"early_stopping"`), and what callbacks add
    (`history["best_epoch"]`, and `"stop_reason": "epochs"` when it did not stop, with
    `zoo.EarlyStopping`).

    **Raises:**

    `TypeError` or `ValueError` naming the argument, before the first step, for a bad
    argument. A run stopped early raises a [`zoo.TrainingStopped`][] whose `.model` and
    `.history` are those of the last completed epoch (bit for bit what a run of that many
    epochs returns), with or without checkpoints: [`zoo.NonFiniteLossError`][] (a
    `FloatingPointError`) for a non-finite loss, [`zoo.TrainingInterrupted`][] (a
    `KeyboardInterrupt`) for Ctrl-C, and a `ValueError` for a learning-rate schedule that
    returned a negative or non-finite value (checked at each step when the optimizer is
    wrapped in `optax.inject_hyperparams`). A failed checkpoint write (a full disk) raises an
    `OSError` naming the folder and the step.

    **Example:**

    ```python
    import jax, optax, zoo
    model = zoo.MLP(in_size=64, out_size=10, hidden=(128,), key=jax.random.key(0))
    model, history = zoo.train(model, zoo.data.digits("train"), optimizer=optax.adam(1e-3),
                               epochs=10, batch_size=64, eval_data=zoo.data.digits("test"),
                               key=jax.random.key(1))
    print(history["eval"]["accuracy"][-1])
    ```

    Fit-style: hold out a tenth of each class, compute in bfloat16, stop when the held-out
    accuracy has not improved for 3 epochs, return the best model and save it, log for
    TensorBoard, and checkpoint every 50 steps so that a killed run resumes:

    ```{.python continuation}
    model, history = zoo.train(
        model, zoo.data.digits("train"), epochs=20, batch_size=64,
        validation_split=zoo.ValidationSplit(0.1, stratify=True), precision="bfloat16",
        callbacks=[zoo.EarlyStopping("accuracy", patience=3),
                   zoo.ModelCheckpoint("models/digits", monitor="accuracy"),
                   zoo.Logger("runs/digits", tensorboard=True), zoo.ProgressBar()],
        checkpoint=zoo.Checkpointing("runs/digits/checkpoints", every=50, resume=True),
    )
    print(history["best_epoch"], history["stop_reason"])
    ```
    """
    run = built_run(
        model, data, loss, optimizer, epochs, batch_size, key, eval_data, validation_split,
        metrics, eval_fn, callbacks, checkpoint, mesh, precision, loop,
    )  # fmt: skip
    programs, dynamic, totals, history = (
        run.programs,
        run.dynamic,
        StepTotals.zeros(),
        new_history(),
    )
    saver = Saver(checkpoint, run.record, finite_only=run.loop.on_nonfinite == "raise")
    parts = good = None
    try:
        good = Good(_copied(dynamic.model), history)
        parts = Parts(run, programs.model_of(good.model), int(epochs), saver.resumed)
        saver.begin()  # every check has passed: from here on, files are written
        stopped = None
        if saver.resumed:
            dynamic, totals, history, saved, stopped = saver.restore(dynamic, parts.saved())
            parts.restore(saved, history)
            good = Good(_copied(dynamic.model), copy.deepcopy(history))
        if run.runner.skipped_per_epoch:
            history["skipped_examples_per_epoch"] = run.runner.skipped_per_epoch
        hooks = parts.hooks(saver, lambda: (copy.deepcopy(history), parts.saved(), None))
        for epoch in range(int(dynamic.epoch), int(epochs)):
            if stopped is not None:
                break  # a resumed run that had already stopped
            parts.epoch = epoch + 1
            start = time.perf_counter()
            with schedule_checked(programs, good):
                dynamic, totals = run.runner.run(dynamic, totals, hooks)
                jax.block_until_ready(totals)  # programs run asynchronously: time the work
            seconds = time.perf_counter() - start
            if run.loop.on_nonfinite == "raise":
                raise_if_not_finite(totals, programs, good)
            dynamic = _next_epoch(dynamic)
            state = programs.combine(dynamic)
            record_epoch(
                history,
                epoch=epoch + 1,
                step=int(state.step),
                seconds=seconds,
                totals=totals,
                opt_state=state.opt_state,
                eval_metrics=run.evaluation(state.model),
                grad_norm=run.loop.grad_norm,
            )
            good = Good(_copied(dynamic.model), copy.deepcopy(history))
            info = EpochInfo(
                epoch + 1, int(state.step), copy.deepcopy(history), programs.model_of(good.model)
            )
            stopped = parts.after_epoch(info)
            dynamic = eqx.filter(parts.adjust(state), eqx.is_array)
            totals = StepTotals.zeros()
            saver.save(int(state.step), dynamic, totals, good.history, parts.saved(), stopped)
    except KeyboardInterrupt as interrupt:
        if good is None:  # stopped before training began: nothing to hand back
            raise
        raise interrupted(programs, good) from interrupt
    finally:
        saver.close()  # waits for background saves: a returned or raised train has saved
        if parts is not None:
            parts.close()
    history |= parts.summary() | ({} if stopped is None else {"stop_reason": stopped})
    return parts.final_model(programs.combine(dynamic).model), history


def _copied(tree):
    """A copy of the arrays of `tree`, whose own buffers the next compiled run donates."""
    return jax.tree.map(jnp.copy, tree)


def _next_epoch(dynamic: TrainState) -> TrainState:
    return eqx.tree_at(
        lambda s: (s.epoch, s.batch), dynamic, (dynamic.epoch + 1, dynamic.batch * 0)
    )


# The callbacks of one run and their states: the loop's one place that calls them.
#
# Each callback's state is held here and passed to it explicitly; a callback sees only what the
# loop gives it (`RunInfo`, `ChunkInfo`, `EpochInfo`), never another callback.


class Parts:
    def __init__(self, run, model: eqx.Module, epochs: int, resumed: bool):
        self.callbacks = run.callbacks
        self.epoch = 0  # the epoch running, 1-based
        info = RunInfo(
            epochs=epochs,
            steps_per_epoch=run.runner.steps_per_epoch,
            eval_names=run.evaluation.names,
            resumed=resumed,
            history=new_history(),
            model=model,
        )
        self._states = []
        for callback in self.callbacks:  # one at a time: a refusal leaves the rest unmade
            self._states.append(callback.init(info))

    def saved(self) -> dict:
        """What the callbacks keep in a checkpoint, by position."""
        parts = {
            str(i): c.saved(s)
            for i, (c, s) in enumerate(zip(self.callbacks, self._states, strict=False))
        }
        return {index: part for index, part in parts.items() if part is not None}

    def restore(self, saved: dict, history: dict) -> None:
        for index, callback in enumerate(self.callbacks):
            part = saved.get(str(index))
            self._states[index] = callback.restored(self._states[index], part, history)

    def after_chunk(self, steps: int, totals: StepTotals) -> None:
        examples = int(totals.examples)
        loss = float(totals.loss) / examples if examples else float("nan")
        info = ChunkInfo(self.epoch, steps, loss)
        self._states = [
            c.after_chunk(s, info) for c, s in zip(self.callbacks, self._states, strict=False)
        ]

    def after_epoch(self, info: EpochInfo) -> str | None:
        """Calls each callback; the name of the first that asks to stop, or None."""
        stopped = None
        for index, callback in enumerate(self.callbacks):
            mine = info._replace(history=copy.deepcopy(info.history))
            self._states[index], stop = callback.after_epoch(self._states[index], mine)
            if stop and stopped is None:
                stopped = callback.name
        return stopped

    def adjust(self, train_state):
        """The training state after each callback's `adjust`, in order."""
        for callback, state in zip(self.callbacks, self._states, strict=True):
            train_state = callback.adjust(state, train_state)
        return train_state

    def summary(self) -> dict:
        entries = {}
        for callback, state in zip(self.callbacks, self._states, strict=False):
            entries |= callback.summary(state)
        return entries

    def final_model(self, model: eqx.Module) -> eqx.Module:
        for callback, state in zip(self.callbacks, self._states, strict=False):
            model = callback.final_model(state, model)
        return model

    def close(self) -> None:
        for callback, state in zip(self.callbacks, self._states, strict=False):
            callback.close(state)

    def hooks(self, saver, extra):
        return _Hooks(self, saver, extra)


class _Hooks:
    """What the epoch runners call between compiled runs: the saver's checkpoints within an
    epoch, and the callbacks' `after_chunk`."""

    def __init__(self, parts: Parts, saver, extra):
        self._parts, self._saver, self._extra = parts, saver, extra
        # Reading a chunk's totals waits for it: only when some callback looks at chunks.
        self._chunks = any(type(c).after_chunk is not Callback.after_chunk for c in parts.callbacks)

    def steps_until_due(self, step: int) -> int | None:
        return self._saver.steps_until_due(step)

    def after_steps(self, step, dynamic, totals) -> None:
        self._saver.after_steps(step, dynamic, totals, self._extra)

    def after_chunk(self, steps: int, totals: StepTotals) -> None:
        if self._chunks:
            self._parts.after_chunk(steps, totals)


# A training run built from `zoo.train`'s arguments: checked, then made into its programs, data,
# evaluation and run record, before any step runs or anything is written.
#
# Options that are objects (`Loop`, `Checkpointing`, `ValidationSplit`, the callbacks) check
# themselves when made (`__check_init__`); here are the checks of plain arguments and of how
# arguments fit together (a model with the data, the eval data with the metrics).


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
    loss_fn = resolve_loss(loss)
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
    if isinstance(data, Mapping):
        data = checked_dataset(data, argument="data")
    if loss == "cross_entropy":
        labels_checked = check_class_labels(
            model, data if isinstance(data, Mapping) else None, "data"
        )
        check_class_labels(model, eval_arrays, "eval_data")
        if labels_checked:  # every label checked here: none in the step
            loss_fn = with_labels_in_range(loss_fn)
    loss_fn = with_precision(loss_fn, precision)
    make_step = functools.partial(
        make_train_step,
        loss_fn,
        optimizer,
        skip_nonfinite=loop.on_nonfinite == "skip",
        grad_norm=loop.grad_norm,
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
    checked = finite_at_start(rule, model) if loop.on_nonfinite == "raise" else None
    programs = Programs(train_step, static, batch_size, check_model=checked)
    runner = epoch_runner(
        data, programs, batch_size, loop.last_batch, loop.fused, loop.steps_per_chunk, strategy
    )
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
