"""`zoo.train`: a function from (model, data, ...) to (trained model, history)."""

import functools
import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jaxtyping import PRNGKeyArray

from .._custom_types import Batch, Dataset, LossFn, Optimizer
from .._evaluate import evaluate
from .._losses import resolve_loss
from .._metrics import Metric, resolve_metrics
from ..distributed._routing import routing_for
from ..distributed._trainer import Placement, shard_training, training_mesh
from ._accumulation import accumulating, check_accumulate
from ._checkpointing import Saver
from ._dataset import checked_dataset, gather, host_rows, nbytes, num_examples
from ._early_stopping import EarlyStopping
from ._fused import fits_on_devices
from ._history import current_learning_rate, new_history, record_epoch
from ._logs import EpochLogs, check_logging
from ._precision import check_precision, dynamic_loss_scaling, with_precision
from ._programs import Programs, StepTotals, make_train_step
from ._progress import progress_bar
from ._rules import DENSE, rule_for
from ._state import TrainState, initial_state, validation_key
from ._validation import check_validation_split, split_validation

LastBatch = Literal["keep", "drop"]

# Metrics recorded on eval data when a built-in loss is named and `metrics` is not given.
_DEFAULT_METRICS = {
    "cross_entropy": ("cross_entropy", "accuracy"),
    "bce": ("bce", "accuracy"),
    "mse": ("mse", "mae"),
}
_PROGRESS_UPDATES_PER_EPOCH = 10
# Each compiled run of steps costs a dispatch and a wait on the host: on a short epoch a tenth
# of it (2 of 16 steps, say) made zoo.train 1.3x slower than one program for the epoch.
_MIN_STEPS_PER_CHUNK = 32
_ITERABLE_STEPS_PER_REPORT = 50


def train(
    model: eqx.Module,
    data: Dataset | Iterable[Dataset],
    *,
    loss: str | LossFn = "cross_entropy",
    optimizer: Optimizer | None = None,
    epochs: int = 1,
    batch_size: int = 128,
    key: PRNGKeyArray | None = None,
    eval_data: Dataset | None = None,
    metrics: Sequence[str | Metric] | None = None,
    eval_batch_size: int = 1024,
    last_batch: LastBatch = "keep",
    fused: bool | None = None,
    steps_per_chunk: int | None = None,
    progress: bool | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    on_nonfinite: Literal["raise", "skip"] = "raise",
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    keep: int | None = 3,
    resume: bool = False,
    mesh: Mesh | None = None,
    eval_fn: Callable[[eqx.Module], Mapping[str, float]] | None = None,
    validation_split: float | None = None,
    stratify: bool = False,
    early_stopping: EarlyStopping | None = None,
    precision: str = "float32",
    accumulate: int = 1,
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
      losses), or an iterable of such batches, iterated once per epoch.
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
    - `eval_data`: a dataset evaluated after each epoch.
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
    - `on_epoch`: called as `on_epoch(history)` after each epoch, e.g. to log or plot.
    - `on_nonfinite`: what a non-finite loss or gradient does. `"raise"` (the default) stops
      training with a `FloatingPointError` naming the first bad step, before that epoch is
      recorded or checkpointed, so the last checkpoint stays the last good state. `"skip"`
      leaves the model and optimizer state unchanged for such a step and counts it in
      `history["train"]["nonfinite_steps"]`.
    - `checkpoint_dir`: a folder for training checkpoints ([`zoo.Checkpoints`][]): the whole
      training state, the epoch's running sums and the history, saved at the end of every
      epoch and, with `checkpoint_every`, every that many steps; written in the background.
    - `checkpoint_every`: steps between checkpoints within an epoch (`None`: epoch ends only).
    - `keep`: how many of the latest checkpoints to keep (`None`: all).
    - `resume`: continue from the latest complete checkpoint in `checkpoint_dir`, when there is
      one, to the same model and history an uninterrupted run gives, bit for bit (the `time`
      of the resumed epoch aside). The other arguments must be those of the first run.
    - `mesh`: a `jax.sharding.Mesh` to train on (see `zoo.distributed`): batches split over its
      `"data"` and `"fsdp"` axes, embedding tables row-sharded over `"model"`, everything else
      replicated (or split over `"fsdp"`). `batch_size` must divide by the batch axes' size.
      With a `zoo.sparse` optimizer and a `"model"` axis, each batch that divides by the
      number of devices is split over all of them, and each id is routed to the device that
      holds its row: `O(batch / devices)` per device (docs/scaling.md).
      With several processes, each passes the same arguments (the same full `data`); the
      returned model is then a global array on the mesh. `None`: one device.
    - `eval_fn`: called as `eval_fn(model)` after each epoch, before `on_epoch`; the figures
      of the dict it returns are recorded in `history["eval"]` beside the metrics. For
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
      by epoch), with `tensorboardX` (`pip install 'zoo[tensorboard]'`).

    **Returns:**

    `(model, history)`. `history` holds per-epoch lists: `history["train"]["loss"]`,
    `history["train"]["grad_norm"]` (mean global gradient norm),
    `history["train"]["learning_rate"]` (that of the epoch's last step, when recorded),
    `history["eval"][metric]`, `history["time"]` (seconds of training per epoch),
    `history["epoch"]` and `history["step"]`; with `early_stopping`, also
    `history["best_epoch"]` and `history["stop_reason"]`.

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
    _check_hyperparameters(epochs, batch_size, eval_batch_size, last_batch, steps_per_chunk)
    _check_checkpointing(checkpoint_dir, checkpoint_every, resume)
    if on_nonfinite not in ("raise", "skip"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'skip'; got {on_nonfinite!r}.")
    check_validation_split(validation_split, stratify, data, eval_data)
    check_precision(precision)
    check_logging(log_dir, tensorboard)
    _check_early_stopping(early_stopping)
    optimizer = optax.adam(1e-3) if optimizer is None else optimizer
    _check_optimizer(optimizer)
    rule = rule_for(optimizer, in_place=on_nonfinite == "raise" and mesh is None)
    check_accumulate(accumulate, batch_size, rule)
    _check_precision_for(rule, precision)
    loss_fn = with_precision(resolve_loss(loss), precision)
    if precision == "float16":
        optimizer = dynamic_loss_scaling(optimizer)
    if metrics is None:
        metrics = _DEFAULT_METRICS.get(loss, ()) if isinstance(loss, str) else ()
    # Fail on a bad name before any training, not after an epoch.
    metric_names = list(resolve_metrics(metrics))
    key = jax.random.key(0) if key is None else key
    if validation_split is not None:
        arrays = checked_dataset(data, argument="data")
        data, eval_data = split_validation(
            arrays, validation_split, stratify=stratify, key=validation_key(key)
        )
    eval_arrays = None if eval_data is None else checked_dataset(eval_data, argument="eval_data")
    if early_stopping is not None:
        early_stopping.check_monitor(
            _eval_names(model, eval_arrays, metric_names, eval_fn, early_stopping.monitor)
        )
    mesh = None if mesh is None else training_mesh(mesh, batch_size)

    rule = accumulating(rule, accumulate)
    make_step = functools.partial(
        make_train_step, loss_fn, optimizer, skip_nonfinite=on_nonfinite == "skip"
    )
    train_step = make_step(rule)

    def init(model: eqx.Module) -> TrainState:
        return initial_state(model, optimizer.init(rule.params(model)), key)

    if mesh is None:
        dynamic, static = eqx.partition(init(model), eqx.is_array)
        # The programs donate the state's buffers; copy once so the caller's model stays usable.
        dynamic = jax.tree.map(jnp.copy, dynamic)
    else:
        routed = routing_for(rule, make_step, loss_fn, mesh)
        dynamic, static, train_step = shard_training(init, model, train_step, mesh, routed)
    _check_learning_rate(current_learning_rate(dynamic.opt_state))
    programs = Programs(train_step, static, batch_size)
    runner = _epoch_runner(
        data, programs, batch_size, last_batch, fused, steps_per_chunk, Placement(mesh)
    )
    if loss == "cross_entropy":
        for argument, arrays in (("data", runner.arrays), ("eval_data", eval_arrays)):
            _check_class_labels(model, arrays, argument)

    saver = Saver(checkpoint_dir, checkpoint_every, keep)
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

    first_epoch = int(dynamic.epoch)
    remaining = (
        None
        if runner.steps_per_epoch is None
        else (runner.steps_per_epoch * (epochs - first_epoch) - int(dynamic.batch))
    )
    try:
        with progress_bar(remaining, progress, epochs) as bar:
            for epoch in range(first_epoch, epochs):
                if early_stopping is not None and _decision(early_stopping, history).stop:
                    break  # a resumed run that had already stopped
                bar.set_description(f"epoch {epoch + 1}/{epochs}")
                start = time.perf_counter()
                dynamic, totals = runner.run(dynamic, totals, bar, saver)
                jax.block_until_ready(totals)  # programs run asynchronously: time the work
                seconds = time.perf_counter() - start
                if on_nonfinite == "raise":
                    _raise_if_not_finite(totals)
                dynamic = _next_epoch(dynamic)
                state = programs.combine(dynamic)
                eval_metrics = {}
                if eval_arrays is not None and metrics:
                    eval_metrics = evaluate(
                        state.model, eval_arrays, metrics, batch_size=eval_batch_size
                    )
                if eval_fn is not None:
                    eval_metrics |= {k: float(v) for k, v in eval_fn(state.model).items()}
                record_epoch(
                    history,
                    epoch=epoch + 1,
                    step=int(state.step),
                    seconds=seconds,
                    totals=totals,
                    opt_state=state.opt_state,
                    eval_metrics=eval_metrics,
                )
                if keep_best and _decision(early_stopping, history).best_epoch == epoch + 1:
                    saver.best_model = _copied(dynamic.model)
                saver.after_epoch(int(state.step), dynamic)
                logs.after_epoch(history)
                totals = StepTotals.zeros()
                bar.set_postfix(_postfix(history))
                if on_epoch is not None:
                    on_epoch(history)
                if early_stopping is not None and _decision(early_stopping, history).stop:
                    break
    finally:
        saver.close()  # waits for background saves: a returned or raised train has saved
        logs.close()
    if early_stopping is None:
        return programs.combine(dynamic).model, history
    decision = _decision(early_stopping, history)
    history["best_epoch"] = decision.best_epoch
    history["stop_reason"] = "early_stopping" if decision.stop else "epochs"
    if keep_best and decision.best_epoch > 0:
        dynamic = eqx.tree_at(lambda s: s.model, dynamic, saver.best_model)
    return programs.combine(dynamic).model, history


def _decision(early_stopping: EarlyStopping, history: dict):
    return early_stopping.decide(history["eval"].get(early_stopping.monitor, []))


def _copied(tree):
    """A copy of the arrays of `tree`, whose own buffers the next compiled run donates."""
    return jax.tree.map(jnp.copy, tree)


def _eval_names(model, eval_arrays, metric_names, eval_fn, monitor) -> list[str]:
    """The names the per-epoch evaluation records, known before training.

    `eval_fn`'s names are known only by calling it: it runs once on the untrained model, and
    only when the monitored name is not among the metrics.
    """
    names = metric_names if eval_arrays is not None else []
    if monitor not in names and eval_fn is not None:
        names = [*names, *eval_fn(model)]
    return names


def _check_early_stopping(early_stopping) -> None:
    if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
        raise TypeError(
            "early_stopping must be a zoo.EarlyStopping, such as "
            f"zoo.EarlyStopping(monitor='accuracy', patience=3); got {early_stopping!r}."
        )


def _check_precision_for(rule, precision: str) -> None:
    if precision != "float32" and rule is not DENSE:
        raise ValueError(
            f"precision={precision!r} does not work with zoo.sparse optimizers yet (their "
            "embedding lookups read the float32 tables); use precision='float32' with them."
        )


def _next_epoch(dynamic: TrainState) -> TrainState:
    return eqx.tree_at(
        lambda s: (s.epoch, s.batch), dynamic, (dynamic.epoch + 1, dynamic.batch * 0)
    )


def _postfix(history: dict) -> dict[str, str]:
    figures = {"loss": history["train"]["loss"][-1]}
    figures.update({name: values[-1] for name, values in history["eval"].items()})
    return {name: f"{value:.4g}" for name, value in figures.items()}


def _raise_if_not_finite(totals: StepTotals) -> None:
    step = int(totals.first_nonfinite_step)
    if step >= 0:
        raise FloatingPointError(
            f"the loss became non-finite (nan or inf) at step {step}. Lower the learning rate, "
            "clip gradients with optax.chain(optax.clip_by_global_norm(1.0), ...), or check the "
            "data for non-finite values."
        )


class _EpochLayout(NamedTuple):
    """How an epoch of a dataset splits into batches."""

    batch_size: int
    full_batches: int
    remainder: int  # size of the last, smaller batch when it is kept (0: none)
    skipped: int  # examples the last batch would have held, when it is dropped
    chunk: int  # steps per compiled run and per progress update

    @classmethod
    def of(cls, count, batch_size, last_batch, steps_per_chunk) -> "_EpochLayout":
        full, remainder = divmod(count, batch_size)
        kept = remainder if last_batch == "keep" else 0
        chunk = steps_per_chunk or max(
            -(-full // _PROGRESS_UPDATES_PER_EPOCH), min(full, _MIN_STEPS_PER_CHUNK), 1
        )
        return cls(batch_size, full, kept, remainder - kept, chunk)

    @property
    def steps(self) -> int:
        return self.full_batches + (self.remainder > 0)


class _EpochRunner:
    """Runs one epoch, fused or step by step; built once per training run."""

    steps_per_epoch: int | None = None
    skipped_per_epoch: int = 0
    arrays: dict | None = None  # the whole dataset, when there is one (not for iterables)

    def run(
        self, dynamic: TrainState, totals: StepTotals, bar, saver: Saver
    ) -> tuple[TrainState, StepTotals]:
        """Runs the rest of the epoch that `dynamic` is in, from its batch position."""
        raise NotImplementedError


class _FusedEpochs(_EpochRunner):
    """The dataset lives on the device; each chunk of steps runs as one program."""

    def __init__(self, arrays, programs: Programs, layout: _EpochLayout, placement: Placement):
        self.arrays = arrays
        self._data = placement.dataset(arrays)
        self._count = num_examples(arrays)
        self._programs = programs
        self._layout = layout
        self.steps_per_epoch = layout.steps
        self.skipped_per_epoch = layout.skipped

    def run(self, dynamic, totals, bar, saver):
        layout = self._layout
        order = self._programs.epoch_order(dynamic, self._count)
        report = _ChunkReport(bar)
        batch, step = int(dynamic.batch), int(dynamic.step)
        while batch < layout.full_batches:
            steps = min(layout.chunk, layout.full_batches - batch, _until(saver, step))
            dynamic, totals = self._programs.run_steps(dynamic, totals, self._data, order, steps)
            report.dispatched(totals, steps)
            batch, step = batch + steps, step + steps
            saver.after_steps(step, dynamic, totals)
        if layout.remainder:
            last = gather(self._data, order[layout.full_batches * layout.batch_size :])
            dynamic, totals = self._programs.one_step(dynamic, totals, last)
            report.dispatched(totals, 1)
        report.flush()
        return dynamic, totals


def _until(saver: Saver, step: int) -> int:
    """Steps until the next checkpoint is due, or effectively no limit."""
    due = saver.steps_until_due(step)
    return 2**31 - 1 if due is None else due


class _HostEpochs(_EpochRunner):
    """The dataset stays on the host; each step's batch is gathered there and prefetched."""

    def __init__(self, arrays, programs: Programs, layout: _EpochLayout, placement: Placement):
        self.arrays = self._arrays = arrays
        self._placement = placement
        self._count = num_examples(arrays)
        self._programs = programs
        self._layout = layout
        self.steps_per_epoch = layout.steps
        self.skipped_per_epoch = layout.skipped

    def _batches(self, order: np.ndarray, first: int) -> Iterator[Batch]:
        size = self._layout.batch_size
        for step in range(first, self.steps_per_epoch):
            rows = host_rows(self._arrays, order[step * size : (step + 1) * size])
            yield self._placement.batch(rows)

    def run(self, dynamic, totals, bar, saver):
        order = np.asarray(self._programs.epoch_order(dynamic, self._count))
        batches = self._batches(order, int(dynamic.batch))
        return _run_batches(
            self._programs, dynamic, totals, batches, bar, self._layout.chunk, saver
        )


class _IterableEpochs(_EpochRunner):
    """`data` is an iterable of batches, iterated afresh each epoch."""

    def __init__(self, data: Iterable[Dataset], programs: Programs, steps_per_chunk, placement):
        self._data = data
        self._placement = placement
        self._programs = programs
        self._chunk = steps_per_chunk or _ITERABLE_STEPS_PER_REPORT
        self.steps_per_epoch = len(data) if hasattr(data, "__len__") else None

    def run(self, dynamic, totals, bar, saver):
        # A resumed epoch skips the batches it already took: the iterable must repeat its order.
        remaining = itertools.islice(self._data, int(dynamic.batch), None)
        batches = (self._placement.batch(_checked_batch(batch)) for batch in remaining)
        dynamic, totals = _run_batches(
            self._programs, dynamic, totals, batches, bar, self._chunk, saver
        )
        if int(totals.steps) + int(totals.nonfinite_steps) == 0:
            raise ValueError(
                "data yielded no batches this epoch. A generator can be iterated only once: pass "
                "a list of batches, or an object whose __iter__ starts a new pass each epoch."
            )
        return dynamic, totals


def _checked_batch(batch) -> dict:
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"each batch from data must be a mapping such as {{'x': ..., 'y': ...}}; "
            f"got {type(batch).__name__}."
        )
    return checked_dataset(batch, argument="batch")


def _run_batches(programs: Programs, dynamic, totals, batches: Iterable[Batch], bar, chunk, saver):
    """Runs a step per batch, with the next batch already on its way to the device."""
    report = _ChunkReport(bar)
    step = int(dynamic.step)
    ahead = deque()

    def take_step(dynamic, totals):
        dynamic, totals = programs.one_step(dynamic, totals, ahead.popleft())
        saver.after_steps(step + 1, dynamic, totals)
        return dynamic, totals

    for taken, batch in enumerate(batches, start=1):
        ahead.append(batch)
        if len(ahead) == 2:
            dynamic, totals = take_step(dynamic, totals)
            step += 1
        if taken % chunk == 0:
            report.dispatched(totals, chunk)
    while ahead:
        dynamic, totals = take_step(dynamic, totals)
        step += 1
    report.dispatched(totals, max(0, int(totals.steps) - report.steps))
    report.flush()
    return dynamic, totals


class _ChunkReport:
    """Progress-bar updates that never stall the device.

    Reading a total waits for the program that computes it. So when a chunk has been
    dispatched, the bar shows the totals of the chunk *before* it, which are ready or nearly so
    while the device already works on the next one.
    """

    def __init__(self, bar):
        self._bar = bar
        self._pending: tuple[StepTotals, int] | None = None
        self.steps = 0

    def dispatched(self, totals: StepTotals, steps: int) -> None:
        self.flush()
        self._pending = (totals, steps)
        self.steps += steps

    def flush(self) -> None:
        if self._pending is None:
            return
        totals, steps = self._pending
        self._pending = None
        self._bar.update(steps)
        if not self._bar.disable:
            self._bar.set_postfix(loss=f"{float(totals.loss) / int(totals.examples):.4g}")


def _epoch_runner(
    data, programs, batch_size, last_batch, fused, steps_per_chunk, placement
) -> _EpochRunner:
    if not isinstance(data, Mapping):
        if fused:
            raise ValueError("fused=True needs data as a mapping of arrays, not an iterable.")
        if isinstance(data, str | bytes) or not isinstance(data, Iterable):
            raise TypeError(
                "data must be a mapping of equal-length arrays such as {'x': features, "
                f"'y': labels}}, or an iterable of such batches; got {type(data).__name__}."
            )
        return _IterableEpochs(data, programs, steps_per_chunk, placement)
    arrays = checked_dataset(data, argument="data")
    if last_batch == "drop" and num_examples(arrays) < batch_size:
        raise ValueError(
            f"batch_size={batch_size} exceeds the {num_examples(arrays)} examples of data and "
            "last_batch='drop' would skip them all; lower batch_size or use last_batch='keep'."
        )
    if fused is None:
        fused = fits_on_devices(nbytes(arrays), placement.mesh)
    layout = _EpochLayout.of(num_examples(arrays), batch_size, last_batch, steps_per_chunk)
    return (_FusedEpochs if fused else _HostEpochs)(arrays, programs, layout, placement)


def _check_class_labels(model: eqx.Module, arrays: dict | None, argument: str) -> None:
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


def _check_learning_rate(learning_rate: float | None) -> None:
    if learning_rate is not None and not 0 < learning_rate < float("inf"):
        raise ValueError(
            f"the optimizer's learning rate must be positive and finite; got {learning_rate:.6g}. "
            "For example optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)."
        )


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}.")


def _check_hyperparameters(epochs, batch_size, eval_batch_size, last_batch, steps_per_chunk):
    if isinstance(epochs, bool) or not isinstance(epochs, int | np.integer) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0; got {epochs!r}.")
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("eval_batch_size", eval_batch_size)
    if steps_per_chunk is not None:
        _check_positive_int("steps_per_chunk", steps_per_chunk)
    if last_batch not in ("keep", "drop"):
        raise ValueError(f"last_batch must be 'keep' or 'drop'; got {last_batch!r}.")


def _check_checkpointing(checkpoint_dir, checkpoint_every, resume) -> None:
    if checkpoint_every is not None:
        _check_positive_int("checkpoint_every", checkpoint_every)
        if checkpoint_dir is None:
            raise ValueError("checkpoint_every needs checkpoint_dir: where should they go?")
    if resume and checkpoint_dir is None:
        raise ValueError(
            "resume=True needs checkpoint_dir, the folder of the run to continue: "
            "zoo.train(..., checkpoint_dir='runs/x', resume=True)."
        )


def _check_optimizer(optimizer) -> None:
    if not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise TypeError(
            "optimizer must be an optax GradientTransformation such as optax.adam(1e-3) (or a "
            f"zoo.sparse optimizer); got {optimizer!r}."
        )
