"""What is kept of a run: training checkpoints (the `zoo.Checkpointing` option, and the `Saver`
that carries it out), the run record that only the same run resumes from, and the errors that
hand back the last good model when training stops early.

A checkpoint holds the training state, the current epoch's running sums, the history of the
epochs before, what each callback keeps (`Callback.saved`), and whether a callback had
stopped the run; so a resumed run records, decides and returns exactly what an uninterrupted
one would. Only a finite state is ever saved, so `keep` never removes the newest good one.
"""

import contextlib
import json
import os
import pathlib
from typing import Any, NamedTuple

import equinox as eqx
import jax
import numpy as np

from .. import _checks
from .._custom_types import IntLike
from .._io import _array_store as store
from .._io._checkpoints import Checkpoints
from .._io._folder_lock import LOCK_NAME, FolderInUseError
from ._step import SCHEDULE_ERROR, Programs, StepTotals, TrainState

_EXAMPLE = "zoo.Checkpointing('runs/x', every=500, resume=True)"


class Checkpointing(eqx.Module):
    """Where and when `zoo.train` saves training checkpoints, and whether it resumes.

    **Arguments:**

    - `directory`: the run's folder ([`zoo.Checkpoints`][]): a new or empty folder, or one
      that holds this run. A folder that holds anything else is refused untouched. The run
      holds the folder's lock until it ends (a second run on it fails at once), and records
      there what defines it (`zoo-run.json`; see
      [Resume training](../checkpoints.md#resume-training)).
    - `every`: steps between checkpoints within an epoch (`None`: at epoch ends only).
    - `keep`: how many of the latest checkpoints to keep (`None`: all).
    - `resume`: continue from the latest checkpoint in `directory`, when there is one, to the
      same model and history an uninterrupted run gives, bit for bit (the `time` of the
      resumed epoch aside). Everything that defines the run (the data's size, `batch_size`,
      `last_batch`, `accumulate`, `precision`, `loss`, `key`, the validation split, the
      options of callbacks that decide when to stop, the model's and the optimizer state's
      arrays) must be as it was: a difference is a `ValueError` naming it with both values,
      before anything is written. Without `resume`, a folder that already holds a run's
      checkpoints is refused.

    Checkpoints are saved at the end of every epoch and, with `every`, every that many
    steps, in the background; only from a finite state (with `on_nonfinite="raise"`, never a
    state past a non-finite step).

    !!! example

        ```python
        model = zoo.MLP(in_size=64, out_size=10, hidden=(32,), key=jax.random.key(0))
        checkpoint = zoo.Checkpointing("runs/digits", every=20, resume=True)
        model, history = zoo.train(model, zoo.data.digits("train"), epochs=2,
                                   checkpoint=checkpoint)
        ```
    """

    directory: str | os.PathLike
    every: IntLike | None = None
    keep: IntLike | None = 3
    resume: bool = False

    def __check_init__(self):
        directory = _checks.path("directory", self.directory, example=_EXAMPLE)
        if directory.exists() and not directory.is_dir():
            raise ValueError(
                f"Checkpointing directory must be a folder, but {self.directory} is a file. "
                f"Pass a new or empty folder for the checkpoints: {_EXAMPLE}"
            )
        _checks.optional_positive_int("Checkpointing's every", self.every, example=_EXAMPLE)
        _checks.optional_positive_int(
            "Checkpointing's keep", self.keep, example="zoo.Checkpointing('runs/x', keep=3)"
        )
        _checks.boolean("resume", self.resume, example=_EXAMPLE)


class Saver:
    """Carries out a `Checkpointing` (a no-op without one).

    Made in three steps, so that nothing is written before every check has passed: `Saver(...)`
    checks the folder against the run's record, reading only, and takes its lock; `resumed`
    says whether a checkpoint will be restored; `begin()` writes the record of a new run.
    `close` waits for the saves still being written and releases the folder.
    """

    def __init__(self, option: Checkpointing | None, record: dict | None, *, finite_only: bool):
        self._checkpoints = None
        self._every = None if option is None else option.every
        self._finite_only = finite_only
        self._last = None
        self._recorded = False
        self._record = record
        if option is not None:
            self._recorded = check_run_folder(option.directory, record, option.resume)
            self._directory = option.directory
            self._checkpoints = _opened(option.directory, option.keep)
            self.resumed = option.resume and self._checkpoints.latest_step() is not None
        else:
            self.resumed = False

    @property
    def enabled(self) -> bool:
        return self._checkpoints is not None

    def begin(self) -> None:
        if self.enabled and not self._recorded and jax.process_index() == 0:
            write_record(self._directory, self._record)

    def steps_until_due(self, step: int) -> int | None:
        """How many steps a compiled run may take before a save is due (`None`: no limit)."""
        if not self.enabled or self._every is None:
            return None
        return self._every - step % self._every

    def after_steps(self, step: int, dynamic: TrainState, totals: StepTotals, extra) -> None:
        """Saves if `step` is a multiple of `every` (the runs are cut to land on those) and
        every step so far was finite. `extra()` gives the history and callbacks' parts."""
        if self.enabled and self._every is not None and step % self._every == 0:
            if self._finite_only and int(totals.first_nonfinite_step) >= 0:
                return  # the state is past a non-finite step: never a checkpoint
            self.save(step, dynamic, totals, *extra())

    def save(self, step, dynamic, totals, history: dict, saved: dict, stopped) -> None:
        if not self.enabled or step == self._last:
            return  # the step's checkpoint exists, taken a moment earlier in the same state
        snapshot = _snapshot(dynamic, totals, saved)
        extra = {"history": history, "stopped": stopped}
        self._checkpoints.save(step, snapshot, extra, force=True)
        self._last = step

    def restore(
        self, dynamic: TrainState, saved: dict
    ) -> tuple[TrainState, StepTotals, dict, dict, Any]:
        """The latest checkpoint: `(state, epoch totals, history, callbacks' parts, stopped)`."""
        target = _snapshot(dynamic, StepTotals.zeros(), saved)
        snapshot, extra = self._checkpoints.restore(target)
        self._last = self._checkpoints.latest_step()
        restored = snapshot.get("callbacks", {})
        return (
            snapshot["state"],
            snapshot["epoch_totals"],
            extra["history"],
            restored,
            extra.get("stopped"),
        )

    def close(self) -> None:
        if self.enabled:
            self._checkpoints.close()


def _snapshot(dynamic: TrainState, totals: StepTotals, saved: dict) -> dict:
    snapshot = {"state": dynamic, "epoch_totals": totals}
    return snapshot | {"callbacks": saved} if saved else snapshot


def _opened(directory: str | os.PathLike, keep: int | None) -> Checkpoints:
    try:
        return Checkpoints(directory, keep=keep)
    except FolderInUseError as error:
        raise FolderInUseError(f"Checkpointing directory: {error}") from None


# What defines a training run, recorded in its checkpoint folder: only that run resumes there.
#
# `zoo-run.json` beside the checkpoints holds the arguments that decide which example each step
# takes and what state it updates (the data's size, `batch_size`, `last_batch`, `accumulate`,
# `precision`, `loss`, `key`) and the path, dtype and shape of every array of the model and of
# the optimizer state. A resumed run must give the same; a folder without the record is not a
# training run, and `zoo.train` writes nothing into it.


RECORD_NAME = "zoo-run.json"
_FORMAT = "zoo.run/1"
_NEW_FOLDER = "Choose a new or empty folder, e.g. zoo.Checkpointing('runs/x')."


def run_record(arguments: dict, *, model, opt_state) -> dict:
    """The record of a run: the options that define what it computes (`key` and a callable
    `loss` by name, the rest as given) and the signatures of its state's arrays."""
    arguments = dict(arguments)
    loss = arguments.get("loss")
    if loss is not None and not isinstance(loss, str):
        arguments["loss"] = _name_of(loss)
    arguments["key"] = _key_data(arguments["key"])
    return {
        "format": _FORMAT,
        "arguments": arguments,
        "model": _signature(model),
        "optimizer": _signature(opt_state),
    }


def describe_data(examples: int | None, batches: int | None) -> str:
    if examples is not None:
        return f"{examples} examples"
    return "an iterable" if batches is None else f"an iterable of {batches} batches"


def _name_of(function) -> str:
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', '?')}"


def _key_data(key) -> list[int]:
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key).ravel().tolist()


def _signature(tree) -> list[list[str]]:
    return [
        [leaf.path, store.describe(leaf.value.dtype, leaf.value.shape)]
        for leaf in store.leaves(tree)
    ]


def check_run_folder(directory: str | os.PathLike, record: dict, resume: bool) -> bool:
    """Checks that `directory` may hold the run of `record`, reading only; whether it already
    holds this run's record (which then stays as it is).

    A missing or empty folder takes a new run. A folder with a run takes it again with
    `resume=True` when the records match, and takes a new run only when it holds no
    checkpoint yet. Anything else is refused with a `ValueError` naming the
    `zoo.Checkpointing` directory.
    """
    path = pathlib.Path(directory)
    entries = sorted(entry.name for entry in path.iterdir()) if path.is_dir() else []
    entries = [name for name in entries if name != LOCK_NAME]
    if not entries:
        return False
    recorded = _read(path)
    if recorded is None:
        listed = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise ValueError(
            f"Checkpointing directory {path} is not a zoo training run: it holds {listed} and no "
            f"{RECORD_NAME}, and zoo.train writes its checkpoints only into a new, empty or run "
            f"folder (a zoo.save folder is not one). {_NEW_FOLDER}"
        )
    if resume:
        _check_same_run(recorded, record, path)
        return True
    steps = [name for name in entries if name.split(".")[0].isdigit()]
    if steps:
        raise ValueError(
            f"Checkpointing directory {path} already holds a training run "
            f"(checkpoints {', '.join(steps)}): pass resume=True to continue it, or choose "
            "another folder for a new run, e.g. zoo.Checkpointing('runs/y')."
        )
    return False


def write_record(directory: str | os.PathLike, record: dict) -> None:
    """Writes the record whole or not at all (a temporary file renamed into place)."""
    path = pathlib.Path(directory) / RECORD_NAME
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(record, indent=1))
    os.replace(temporary, path)


def _read(path: pathlib.Path) -> dict | None:
    try:
        recorded = json.loads((path / RECORD_NAME).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise ValueError(
            f"Checkpointing directory {path}: its run record {RECORD_NAME} cannot be read "
            f"({error})."
        ) from None
    if not isinstance(recorded, dict) or recorded.get("format") != _FORMAT:
        raise ValueError(
            f"Checkpointing directory {path}: {RECORD_NAME} is not a run record this zoo writes "
            f"(format {_FORMAT}). {_NEW_FOLDER}"
        )
    return recorded


def _check_same_run(recorded: dict, given: dict, path: pathlib.Path) -> None:
    where = f"the run in Checkpointing directory {path}"
    given_arguments, recorded_arguments = given["arguments"], recorded["arguments"]
    for name in [*given_arguments, *(n for n in recorded_arguments if n not in given_arguments)]:
        value, before = given_arguments.get(name), recorded_arguments.get(name)
        if before != value:
            raise ValueError(
                f"resume=True with {name}={value!r}, but {where} was started with "
                f"{name}={before!r} (recorded {before!r}, given {value!r}): a resumed run must be "
                f"the run it continues. Resume with {name}={before!r}, or start a new run in "
                "another Checkpointing directory."
            )
    _check_same_arrays(
        "a model that does not match the model", recorded["model"], given["model"], where
    )
    _check_same_arrays(
        "an optimizer whose state does not match the optimizer state",
        recorded["optimizer"],
        given["optimizer"],
        where,
    )


def _check_same_arrays(what: str, recorded: list, given: list, where: str) -> None:
    before, now = dict(map(tuple, recorded)), dict(map(tuple, given))
    for leaf_path in [*now, *before]:
        if before.get(leaf_path) != now.get(leaf_path):
            raise ValueError(
                f"resume=True with {what} at {leaf_path} of {where}: recorded "
                f"{before.get(leaf_path, 'no array')}, given {now.get(leaf_path, 'no array')}. "
                "Resume with the model and optimizer the run was started with."
            )


# The errors with which `zoo.train` stops early, carrying the model and history that trained.


class TrainingStopped(BaseException):
    """Base of the errors with which [`zoo.train`][] stops before its last epoch: each one
    carries the last good model and its history, so nothing that trained is lost, with or
    without checkpoints.

    Catch it as `except zoo.TrainingStopped as stop:`; its subclasses are also the standard
    errors, so `except FloatingPointError` and `except KeyboardInterrupt` keep working.

    **Attributes:**

    - `model`: the model at the end of the last epoch that completed (the given model, or
      the resumed one, when none did): bit for bit what `zoo.train(..., epochs=k)` returns
      for that many epochs `k`, with the same arguments otherwise.
    - `history`: the history of those epochs, as `zoo.train` would have returned it.
    - `epochs`: how many epochs `history` holds.
    """

    def __init__(self, message: str, *, model: eqx.Module, history: dict):
        super().__init__(message)
        self.model = model
        self.history = history
        self.epochs = len(history["epoch"])


class NonFiniteLossError(TrainingStopped, FloatingPointError):
    """Raised by `zoo.train` with `on_nonfinite="raise"` when a step's loss (or, with
    `zoo.Loop(grad_norm=True)`, its gradient) is not finite, or the model is not after a
    chunk of steps: a `FloatingPointError` and a [`zoo.TrainingStopped`][], whose `model` and
    `history` are those of the last epoch before the bad step."""


class TrainingInterrupted(TrainingStopped, KeyboardInterrupt):
    """Raised by `zoo.train` in place of the `KeyboardInterrupt` (Ctrl-C) that stopped it,
    from a callback, the data or the loop itself: a `KeyboardInterrupt` and a
    [`zoo.TrainingStopped`][], whose `model` and `history` are those of the last completed
    epoch."""


class LearningRateError(TrainingStopped, ValueError):
    """Raised by `zoo.train` when the optimizer's learning-rate schedule (seen through
    `optax.inject_hyperparams`) returns a negative or non-finite value at a step: a
    `ValueError` and a [`zoo.TrainingStopped`][], whose `model` and `history` are those of the
    last epoch before that step."""


class Good(NamedTuple):
    """The last good model's arrays (a copy) and the history of its epochs."""

    model: eqx.Module
    history: dict


def interrupted(programs: Programs, good: Good) -> "TrainingInterrupted":
    """The `TrainingInterrupted` to raise in place of a `KeyboardInterrupt`, carrying what
    trained."""
    return TrainingInterrupted(
        f"training was interrupted (KeyboardInterrupt) after {len(good.history['epoch'])} "
        "completed epochs; the exception's .model and .history are the last completed "
        "epoch's.",
        model=programs.model_of(good.model),
        history=good.history,
    )


@contextlib.contextmanager
def schedule_checked(programs: Programs, good: Good):
    """The step's check of a schedule's learning rate (`eqx.error_if`, under `jax.jit`) comes
    as a runtime error whose message holds JAX's traceback: raised again, plainly, with what
    trained."""
    try:
        yield
    except Exception as error:  # JAX raises a ValueError or a JaxRuntimeError, by version
        if SCHEDULE_ERROR not in str(error) or isinstance(error, LearningRateError):
            raise
        raise LearningRateError(
            f"{SCHEDULE_ERROR} The exception's .model and .history are those of the last "
            f"epoch before it (epoch {len(good.history['epoch'])}).",
            model=programs.model_of(good.model),
            history=good.history,
        ) from None


def raise_if_not_finite(totals: StepTotals, programs: Programs, good: Good) -> None:
    step = int(totals.first_nonfinite_step)
    if step >= 0:
        raise NonFiniteLossError(
            f"the loss or the model became non-finite (nan or inf) at step {step}. Lower the "
            "learning rate, clip gradients with optax.chain(optax.clip_by_global_norm(1.0), "
            "...), or check the data for non-finite values. The exception's .model and "
            f".history are those of the last epoch before it (epoch {len(good.history['epoch'])}).",
            model=programs.model_of(good.model),
            history=good.history,
        )
