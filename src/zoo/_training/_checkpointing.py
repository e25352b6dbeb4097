"""Training checkpoints: the `zoo.Checkpointing` option, and the `Saver` that carries it out.

A checkpoint holds the training state, the current epoch's running sums, the history of the
epochs before, what each callback keeps (`Callback.saved`), and whether a callback had
stopped the run; so a resumed run records, decides and returns exactly what an uninterrupted
one would. Only a finite state is ever saved, so `keep` never removes the newest good one.
"""

import os
from typing import Any

import equinox as eqx
import jax

from .. import _checks
from .._custom_types import IntLike
from .._io._checkpoints import Checkpoints
from .._io._folder_lock import FolderInUseError
from ._run_record import check_run_folder, write_record
from ._step import StepTotals, TrainState

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
