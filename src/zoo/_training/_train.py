"""`zoo.train`: a function from (model, data, ...) to (trained model, history).

`_setup.built_run` checks the arguments and builds the run (state, programs, epochs,
evaluation, record); then the loop below runs each epoch (`_epochs`), evaluates and records it
(`_history`), hands it to the callbacks (`_parts`) and checkpoints it (`_checkpointing`).
"""

import copy
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jaxtyping import PRNGKeyArray

from .._custom_types import Dataset, IntLike, LossFn, Optimizer, RealLike
from ..metrics._metrics import Metric
from ._callbacks import Callback, EpochInfo
from ._checkpointing import (
    Checkpointing,
    Good,
    Saver,
    interrupted,
    raise_if_not_finite,
    schedule_checked,
)
from ._data import ValidationSplit
from ._epochs import Loop
from ._evaluate import new_history, record_epoch
from ._parts import Parts
from ._setup import built_run
from ._step import StepTotals, TrainState


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
      `zoo.sparse.value_and_update`), so `history["train"]["grad_norm"]` covers the rest.
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
    `history["train"]["grad_norm"]` (mean global gradient norm),
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
