"""Checkpointing inside `zoo.train`: when to save, what a save holds, and how a run resumes."""

import os

import jax

from .._custom_types import PyTree
from .._io._checkpoints import Checkpoints
from .._io._folder_lock import FolderInUseError
from ._programs import StepTotals
from ._run_record import check_run_folder, write_record
from ._state import TrainState


class Saver:
    """Saves the training state every `every` steps and at each epoch's end; a no-op without a
    directory. A save holds the state, the current epoch's running sums and the history of the
    epochs before, so a resumed run records exactly what an uninterrupted one would. With early
    stopping it also holds the best epoch's model, so a resumed run returns the same one.

    The directory holds the run's record (`_run_record`), checked before anything is written,
    and its lock, held until `close`."""

    def __init__(
        self,
        directory: str | os.PathLike | None,
        every: int | None,
        keep: int | None,
        *,
        record: dict | None = None,
        resume: bool = False,
    ):
        self._checkpoints = None
        if directory is not None:
            recorded = check_run_folder(directory, record, resume)
            self._checkpoints = _opened(directory, keep)
            if not recorded and jax.process_index() == 0:
                try:
                    write_record(directory, record)
                except BaseException:
                    self.close()  # and so release the folder
                    raise
        self._every = every
        self._last = None
        self.history: dict | None = None  # the history being built, saved with each checkpoint
        self.best_model: PyTree | None = None  # the arrays of the best epoch's model, if tracked

    @property
    def enabled(self) -> bool:
        return self._checkpoints is not None

    def steps_until_due(self, step: int) -> int | None:
        """How many steps a compiled run may take before a save is due (`None`: no limit)."""
        if not self.enabled or self._every is None:
            return None
        return self._every - step % self._every

    def after_steps(self, step: int, dynamic: TrainState, totals: StepTotals) -> None:
        """Saves if `step` is a multiple of `every` (the runs are cut to land on those)."""
        if self.enabled and self._every is not None and step % self._every == 0:
            self._save(step, dynamic, totals)

    def after_epoch(self, step: int, dynamic: TrainState) -> None:
        if self.enabled:
            self._save(step, dynamic, StepTotals.zeros())

    def _save(self, step: int, dynamic: TrainState, totals: StepTotals) -> None:
        if step == self._last:
            return  # the step's checkpoint exists, taken a moment earlier in the same state
        snapshot = self._snapshot(dynamic, totals, self.best_model)
        self._checkpoints.save(step, snapshot, {"history": self.history}, force=True)
        self._last = step

    @staticmethod
    def _snapshot(dynamic: TrainState, totals: StepTotals, best_model: PyTree | None) -> dict:
        snapshot = {"state": dynamic, "epoch_totals": totals}
        return snapshot if best_model is None else snapshot | {"best_model": best_model}

    def restore(
        self, dynamic: TrainState, totals: StepTotals
    ) -> tuple[TrainState, StepTotals, dict] | None:
        """The latest checkpoint as `(state, epoch totals, history)`, or None when there is none.

        With a `best_model` being tracked, it is restored too (in place of the attribute).
        """
        step = self._checkpoints.latest_step()
        if step is None:
            return None
        target = self._snapshot(dynamic, totals, self.best_model)
        snapshot, extra = self._checkpoints.restore(target)
        self._last = step
        self.best_model = snapshot.get("best_model")
        return snapshot["state"], snapshot["epoch_totals"], extra["history"]

    def close(self) -> None:
        """Waits for saves still being written, and releases the directory."""
        if self.enabled:
            self._checkpoints.close()


def _opened(directory: str | os.PathLike, keep: int | None) -> Checkpoints:
    try:
        return Checkpoints(directory, keep=keep)
    except FolderInUseError as error:
        raise FolderInUseError(f"checkpoint_dir: {error}") from None
