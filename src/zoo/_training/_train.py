"""`zoo.train`: a function from (model, data, ...) to (trained model, history).

The arguments are checked first (`_arguments`), then the state, the compiled programs and the
epoch runner are built, then the epoch loop runs: each epoch is run (`_epochs`), evaluated,
recorded (`_history`), checkpointed (`_checkpointing`) and logged (`_logs`).
"""

import copy
import functools
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jaxtyping import PRNGKeyArray

from .._custom_types import Dataset, IntLike, LossFn, Optimizer, RealLike
from ..losses._losses import resolve_loss
from ..metrics._metrics import Metric, resolve_metrics
from . import _arguments as arguments
from ._accumulation import accumulating, check_accumulate
from ._checkpointing import Saver
from ._dataset import check_class_labels, checked_dataset, num_examples
from ._early_stopping import EarlyStopping
from ._epochs import epoch_runner
from ._evaluate import evaluated
from ._history import current_learning_rate, new_history, record_epoch
from ._logs import EpochLogs, check_logging
from ._precision import check_precision, dynamic_loss_scaling, with_precision
from ._programs import Programs, StepTotals, make_train_step
from ._progress import progress_bar
from ._routing import routing_for
from ._rules import rule_for
from ._run_record import describe_data, run_record
from ._sharded import Placement, shard_training, training_mesh
from ._state import TrainState, initial_state, validation_key
from ._stopped import Good, interrupted, raise_if_not_finite, schedule_checked
from ._validation import check_validation_split, split_validation

LastBatch = Literal["keep", "drop"]

# Metrics recorded on eval data when a built-in loss is named and `metrics` is not given.
_DEFAULT_METRICS = {
    "cross_entropy": ("cross_entropy", "accuracy"),
    "bce": ("bce", "accuracy"),
    "mse": ("mse", "mae"),
}


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
    metrics: Sequence[str | Metric] | None = None,
    eval_batch_size: IntLike = 1024,
    last_batch: LastBatch = "keep",
    fused: bool | None = None,
    steps_per_chunk: IntLike | None = None,
    progress: bool | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    on_nonfinite: Literal["raise", "skip"] = "raise",
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: IntLike | None = None,
    keep: IntLike | None = 3,
    resume: bool = False,
    mesh: Mesh | None = None,
    eval_fn: Callable[[eqx.Module], Mapping[str, float]] | None = None,
    validation_split: RealLike | None = None,
    stratify: bool = False,
    early_stopping: EarlyStopping | None = None,
    precision: str = "float32",
    accumulate: IntLike = 1,
    log_dir: str | os.PathLike | None = None,
    tensorboard: bool = False,
) -> tuple[eqx.Module, dict]:
    """Trains `model` on `data` and returns the trained model and its history.

    A function, not an object: everything training changes lives in one pytree, a
    [`zoo.TrainState`][], and nothing else holds state. When `data` is a mapping of arrays that
    fits in device memory, each run of `steps_per_chunk` steps (shuffling by key, batch slicing,
    the steps and the loss sums) is one compiled program with its buffers donated, and the host
    syncs once per chunk. Otherwise (or with `fused=False`) a compiled step runs per batch, with
    batches prefetched to the device and no host sync per step. Both paths compute the same
    thing for the same key.

    **Arguments:**

    - `model`: any `equinox.Module`; the loss decides how it is called.
    - `data`: a mapping of equal-length arrays (`{"x": inputs, "y": targets}` for the built-in
      losses), or an iterable of such batches, iterated once per epoch (so with `epochs > 1`
      it must be re-iterable: a list, not a generator).
    - `loss`: `"cross_entropy"` (integer labels), `"mse"`, `"bce"`, or any callable
      `loss(model, batch, key) -> scalar` or `loss(model, batch) -> scalar` (see
      [Write your own loss](../training.md#write-your-own-loss)).
    - `optimizer`: an optax optimizer (default `optax.adam(1e-3)`), or a sparse-embedding
      optimizer from `zoo.sparse`. Clipping and schedules come from optax as usual; wrap in
      `optax.inject_hyperparams` to have the learning rate recorded. With `zoo.sparse.sgd` on
      the tables (and `on_nonfinite="raise"`, no `mesh`), each step adds the tables' update
      into them during the backward pass (see `zoo.sparse.value_and_update`): their gradients
      are never materialised, so `history["train"]["grad_norm"]` covers the other parameters.
    - `epochs`: passes over `data`.
    - `batch_size`: examples per step.
    - `key`: the training key; shuffling and the loss's per-step keys (e.g. dropout) derive from
      it, so the same key gives the same result bit for bit. Default `jax.random.key(0)`.
    - `eval_data`: a dataset evaluated after each epoch; traced through the model and the
      metrics before the first step, so that a mismatch is an error naming it at once.
    - `metrics`: names or callables for `eval_data` (see [`zoo.evaluate`][]); by default the
      loss and accuracy for classification losses, MSE and MAE for `"mse"`.
    - `eval_batch_size`: batch size of the evaluation.
    - `last_batch`: `"keep"` takes the last, smaller batch of an epoch as a step of its own;
      `"drop"` skips it (`history["skipped_examples_per_epoch"]` says how many examples).
    - `fused`: force (`True`) or forbid (`False`) the fused on-device epoch; `None` decides by
      whether the dataset fits in device memory.
    - `steps_per_chunk`: steps per compiled run (and per progress-bar update); by default a
      tenth of an epoch, and at least 32 steps (or the whole epoch, when it is shorter).
    - `progress`: show a progress bar; `None` shows one only on a terminal.
    - `on_epoch`: called as `on_epoch(history)` after each epoch, e.g. to log or plot; what it
      returns is ignored. A `KeyboardInterrupt` from it stops training as Ctrl-C does.
    - `on_nonfinite`: what a non-finite loss or gradient does. `"raise"` (the default) stops
      training with a [`zoo.NonFiniteLossError`][] (a `FloatingPointError`) naming the first
      bad step, before that epoch is recorded or checkpointed, so the last checkpoint stays the
      last good state; the error carries the last good model and history. `"skip"` leaves the
      model and optimizer state unchanged for such a step and counts it in
      `history["train"]["nonfinite_steps"]`; an epoch whose every step was skipped records
      `nan` as its loss and grad norm, with a `RuntimeWarning`.
    - `checkpoint_dir`: a folder for training checkpoints ([`zoo.Checkpoints`][]): the whole
      training state, the epoch's running sums and the history, saved at the end of every
      epoch and, with `checkpoint_every`, every that many steps; written in the background.
      A new or empty folder, or one that holds this run: a folder that holds anything else
      is refused untouched. The run holds the folder's lock until it ends (a second run on
      it fails at once), and records there what defines it (`zoo-run.json`; see
      [Resume training](../checkpoints.md#resume-training)).
    - `checkpoint_every`: steps between checkpoints within an epoch (`None`: epoch ends only).
    - `keep`: how many of the latest checkpoints to keep (`None`: all).
    - `resume`: continue from the latest complete checkpoint in `checkpoint_dir`, when there is
      one, to the same model and history an uninterrupted run gives, bit for bit (the `time`
      of the resumed epoch aside). The run's defining arguments (the data's size,
      `batch_size`, `last_batch`, `accumulate`, `precision`, `loss`, `key`, the model's and the
      optimizer state's arrays) must be those it was started with: a difference is a
      `ValueError` naming the argument with both values, before anything is written.
      Without `resume`, a folder that already holds a run's checkpoints is refused.
    - `mesh`: a `jax.sharding.Mesh` to train on (see `zoo.distributed`): batches split over its
      `"data"` and `"fsdp"` axes, embedding tables row-sharded over `"model"`, everything else
      replicated (or split over `"fsdp"`). `batch_size` must divide by the batch axes' size.
      With a `zoo.sparse` optimizer and a `"model"` axis, each batch that divides by the
      number of devices is split over all of them, and each id is routed to the device that
      holds its row: `O(batch / devices)` per device (docs/scaling.md).
      With several processes, each passes the same arguments (the same full `data`); the
      returned model is then a global array on the mesh. `None`: one device.
    - `eval_fn`: called as `eval_fn(model)` after each epoch, before `on_epoch`; the figures
      of the mapping it returns (names to finite numbers, else an error naming `eval_fn`)
      are recorded in `history["eval"]` beside the metrics. For
      evaluations that are not averages over examples, such as ranking metrics
      (`lambda model: zoo.recsys.evaluate_ranking(model, train, test)["model"]`).
    - `validation_split`: a fraction in (0, 1) of `data` (a mapping of arrays) held out as the
      eval set, in place of `eval_data`. The rows are drawn by `key` (its own stream, apart
      from the shuffles), so the same key holds out the same rows; both sides are disjoint.
    - `stratify`: with `validation_split`, hold out that fraction of each class of `data["y"]`
      (integer labels), so both sides keep the class proportions.
    - `early_stopping`: a [`zoo.EarlyStopping`][]: stop once the monitored eval figure has not
      improved for `patience` epochs, and return the best epoch's model, bit-identical to a run
      of exactly that many epochs. The monitored name is checked before any training.
      `history["best_epoch"]` and `history["stop_reason"]` (`"early_stopping"` or
      `"epochs"`) say what happened. Checkpoints hold the best model too, so a resumed run
      stops at the same epoch with the same model.
    - `precision`: `"float32"`, or `"bfloat16"` / `"float16"` for mixed precision: parameters
      and optimizer state stay float32; at the start of the loss the model's floating leaves
      and the batch's floating arrays are cast to the lower precision, so the forward and
      backward passes compute in it, and the gradients arrive in float32. bfloat16 has
      float32's range and needs nothing more; float16 gets dynamic loss scaling (the scale is
      in the optimizer state; a step whose gradients overflow is skipped and halves it;
      `history["train"]["loss_scale"]` and `["loss_scale_overflows"]` record it). Not with
      `zoo.sparse` optimizers.
    - `accumulate`: micro-batches per optimizer step. Each batch of `batch_size` examples
      (which `accumulate` must divide) is taken as `accumulate` slices one after another, and
      the step uses the mean of their gradients: the same step, to float rounding, with the
      activations of only `batch_size / accumulate` examples in memory at a time. An epoch's
      last, smaller batch is taken whole when `accumulate` does not divide it. Not with
      `zoo.sparse` optimizers.
    - `log_dir`: a folder for logs: each epoch's figures are appended to
      `log_dir/history.jsonl`, one JSON object a line (`{"epoch": 1, "step": ..., "time": ...,
      "train/loss": ..., "eval/accuracy": ...}`). A resumed run rewrites it from its
      checkpoint's history first, so each epoch appears once.
    - `tensorboard`: also write TensorBoard event files into `log_dir` (the same figures,
      by epoch), with `tensorboardX` (`pip install 'equinox-zoo[tensorboard]'`).

    **Returns:**

    `(model, history)`. `history` holds per-epoch lists: `history["train"]["loss"]`,
    `history["train"]["grad_norm"]` (mean global gradient norm),
    `history["train"]["learning_rate"]` (that of the epoch's last step, when recorded),
    `history["eval"][metric]`, `history["time"]` (seconds of training per epoch),
    `history["epoch"]` and `history["step"]`; with `early_stopping`, also
    `history["best_epoch"]` and `history["stop_reason"]`.

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

    Fit-style: hold out a tenth of the data, compute in bfloat16, stop when the held-out
    accuracy has not improved for 3 epochs, keep the best model, and log for TensorBoard:

    ```{.python continuation}
    model, history = zoo.train(model, zoo.data.digits("train"), epochs=20, batch_size=64,
                               validation_split=0.1, stratify=True, precision="bfloat16",
                               early_stopping=zoo.EarlyStopping("accuracy", patience=3),
                               log_dir="runs/digits", tensorboard=True)
    print(history["best_epoch"], history["stop_reason"])
    ```
    """
    epochs, batch_size, eval_batch_size, steps_per_chunk = arguments.check_hyperparameters(
        epochs, batch_size, eval_batch_size, last_batch, steps_per_chunk, on_nonfinite
    )
    arguments.check_model(model)
    arguments.check_flags(
        fused=fused, progress=progress, stratify=stratify, tensorboard=tensorboard
    )
    checkpoint_every, keep = arguments.check_checkpointing(
        checkpoint_dir, checkpoint_every, keep, resume
    )
    arguments.check_callbacks(on_epoch, eval_fn)
    arguments.check_reiterable(data, epochs)
    check_validation_split(validation_split, stratify, data, eval_data)
    check_precision(precision)
    check_logging(log_dir, tensorboard)
    arguments.check_early_stopping(early_stopping)
    optimizer = optax.adam(1e-3) if optimizer is None else optimizer
    arguments.check_optimizer(optimizer)
    rule = rule_for(optimizer, in_place=on_nonfinite == "raise" and mesh is None)
    accumulate = check_accumulate(accumulate, batch_size, rule)
    arguments.check_precision_for(rule, precision)
    loss_fn = with_precision(resolve_loss(loss), precision)
    if precision == "float16":
        optimizer = dynamic_loss_scaling(optimizer)
    if metrics is None:
        metrics = _DEFAULT_METRICS.get(loss, ()) if isinstance(loss, str) else ()
    # Fail on a bad name before any training, not after an epoch.
    metric_fns = resolve_metrics(metrics)
    metric_names = list(metric_fns)
    key = arguments.training_key(key)
    if validation_split is not None:
        arrays = checked_dataset(data, argument="data")
        data, eval_data = split_validation(
            arrays, validation_split, stratify=stratify, key=validation_key(key)
        )
    eval_arrays = None if eval_data is None else checked_dataset(eval_data, argument="eval_data")
    arguments.check_eval_data_fits(model, eval_arrays, metric_fns)
    arguments.check_monitored_name(model, early_stopping, eval_arrays, metric_names, eval_fn)
    mesh = None if mesh is None else training_mesh(mesh, batch_size)

    rule = accumulating(rule, accumulate)
    make_step = functools.partial(
        make_train_step, loss_fn, optimizer, skip_nonfinite=on_nonfinite == "skip"
    )
    train_step = make_step(rule)

    def init(model: eqx.Module) -> TrainState:
        # optax's schedules mix Python floats with int32 counts (as in the step's update).
        with jax.numpy_dtype_promotion("standard"):
            opt_state = optimizer.init(rule.params(model))
        return initial_state(model, opt_state, key)

    if mesh is None:
        dynamic, static = eqx.partition(init(model), eqx.is_array)
        # The programs donate the state's buffers; copy once so the caller's model stays usable.
        dynamic = jax.tree.map(jnp.copy, dynamic)
    else:
        routed = routing_for(rule, make_step, loss_fn, mesh)
        dynamic, static, train_step = shard_training(init, model, train_step, mesh, routed)
    arguments.check_learning_rate(current_learning_rate(dynamic.opt_state))
    programs = Programs(train_step, static, batch_size)
    runner = epoch_runner(
        data, programs, batch_size, last_batch, fused, steps_per_chunk, Placement(mesh)
    )
    if loss == "cross_entropy":
        for argument, arrays in (("data", runner.arrays), ("eval_data", eval_arrays)):
            check_class_labels(model, arrays, argument)

    record = (
        None
        if checkpoint_dir is None
        else run_record(
            data=describe_data(
                None if runner.arrays is None else num_examples(runner.arrays),
                runner.steps_per_epoch,
            ),
            batch_size=batch_size,
            last_batch=last_batch,
            accumulate=accumulate,
            precision=precision,
            loss=loss,
            key=key,
            model=dynamic.model,
            opt_state=dynamic.opt_state,
        )
    )
    # Every argument is checked; from here on files are written and the folder is held.
    saver = Saver(checkpoint_dir, checkpoint_every, keep, record=record, resume=resume)
    logs = good = None
    try:
        keep_best = early_stopping is not None and early_stopping.restore_best
        if keep_best:
            saver.best_model = _copied(dynamic.model)  # the start, until an epoch improves on it
        totals, history = StepTotals.zeros(), new_history()
        if resume:
            restored = saver.restore(dynamic, totals)
            if restored is not None:
                dynamic, totals, history = restored
        if runner.skipped_per_epoch:
            history["skipped_examples_per_epoch"] = runner.skipped_per_epoch
        saver.history = history
        logs = EpochLogs(log_dir, tensorboard)
        logs.start(history)
        # What a stopped run hands back: the arrays of the last good model (the programs donate
        # those of the state) and the history of its epochs.
        good = Good(_copied(dynamic.model), copy.deepcopy(history))

        first_epoch = int(dynamic.epoch)
        remaining = (
            None
            if runner.steps_per_epoch is None
            else (runner.steps_per_epoch * (epochs - first_epoch) - int(dynamic.batch))
        )
        with progress_bar(remaining, progress, epochs) as bar:
            for epoch in range(first_epoch, epochs):
                if early_stopping is not None and early_stopping.decision(history).stop:
                    break  # a resumed run that had already stopped
                bar.set_description(f"epoch {epoch + 1}/{epochs}")
                start = time.perf_counter()
                with schedule_checked(programs, good):
                    dynamic, totals = runner.run(dynamic, totals, bar, saver)
                    jax.block_until_ready(totals)  # programs run asynchronously: time the work
                seconds = time.perf_counter() - start
                if on_nonfinite == "raise":
                    raise_if_not_finite(totals, programs, good)
                dynamic = _next_epoch(dynamic)
                state = programs.combine(dynamic)
                eval_metrics = _evaluation(
                    state.model, eval_arrays, metrics, eval_batch_size, eval_fn
                )
                record_epoch(
                    history,
                    epoch=epoch + 1,
                    step=int(state.step),
                    seconds=seconds,
                    totals=totals,
                    opt_state=state.opt_state,
                    eval_metrics=eval_metrics,
                )
                good = Good(_copied(dynamic.model), copy.deepcopy(history))
                if keep_best and early_stopping.decision(history).best_epoch == epoch + 1:
                    saver.best_model = good.model  # never donated: one copy serves both
                saver.after_epoch(int(state.step), dynamic)
                logs.after_epoch(history)
                totals = StepTotals.zeros()
                bar.set_postfix(_postfix(history))
                if on_epoch is not None:
                    on_epoch(history)
                if early_stopping is not None and early_stopping.decision(history).stop:
                    break
    except KeyboardInterrupt as interrupt:
        if good is None:  # stopped before training began: nothing to hand back
            raise
        raise interrupted(programs, good) from interrupt
    finally:
        saver.close()  # waits for background saves: a returned or raised train has saved
        if logs is not None:
            logs.close()
    if early_stopping is None:
        return programs.combine(dynamic).model, history
    decision = early_stopping.decision(history)
    history["best_epoch"] = decision.best_epoch
    history["stop_reason"] = "early_stopping" if decision.stop else "epochs"
    if keep_best and decision.best_epoch > 0:
        dynamic = eqx.tree_at(lambda s: s.model, dynamic, saver.best_model)
    return programs.combine(dynamic).model, history


def _evaluation(model, eval_arrays, metrics, eval_batch_size, eval_fn) -> dict[str, float]:
    """The epoch's eval figures: the metrics on `eval_data`, then what `eval_fn` returns."""
    figures = {}
    if eval_arrays is not None and metrics:
        figures = evaluated(
            model, eval_arrays, metrics, batch_size=eval_batch_size, argument="eval_data"
        )
    if eval_fn is not None:
        figures |= arguments.checked_eval_figures(eval_fn(model))
    return figures


def _copied(tree):
    """A copy of the arrays of `tree`, whose own buffers the next compiled run donates."""
    return jax.tree.map(jnp.copy, tree)


def _next_epoch(dynamic: TrainState) -> TrainState:
    return eqx.tree_at(
        lambda s: (s.epoch, s.batch), dynamic, (dynamic.epoch + 1, dynamic.batch * 0)
    )


def _postfix(history: dict) -> dict[str, str]:
    figures = {"loss": history["train"]["loss"][-1]}
    figures.update({name: values[-1] for name, values in history["eval"].items()})
    return {name: f"{value:.4g}" for name, value in figures.items()}
