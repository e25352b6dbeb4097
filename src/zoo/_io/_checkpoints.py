"""`zoo.Checkpoints`: the last few training states in a directory, saved in the background."""

import contextlib
import errno
import json
import operator
import os
import pathlib
from typing import Any

import jax
import numpy as np

from .. import _checks
from .._custom_types import IntLike, PyTree
from . import _array_store as store
from ._folder_lock import FolderLock
from ._host_memory import Staging
from ._rebuild import name_of

_FORMAT = "zoo.checkpoint/1"


class Checkpoints:
    """Training checkpoints: the last `keep` saves of a training state, one directory per step.

    Built on Orbax's `CheckpointManager`. Each checkpoint holds the state's arrays (a whole
    [`zoo.TrainState`][]: model, optimizer state, including `zoo.sparse` states, step, epoch,
    position in the epoch and PRNG key) and a JSON item: the caller's `extra` (history so far,
    data order, ...), the state's class and a manifest of every array's path, dtype, shape and
    checksum (XXH3-64).

    Guarantees:

    - **Asynchronous.** With `async_save=True`, `save` returns once the state is copied to host
      memory and checksummed; Orbax writes it in a background thread. The copy is the save's
      own, so the caller may donate and overwrite the state's buffers at once (as `zoo.train`
      does every step). The copies are kept until `close`, and each save copies into those of
      the one before (waiting for it to be written first), which is much faster than copying
      into fresh memory; they cost host memory the size of the state.
    - **Atomic.** Orbax writes each step to a temporary directory renamed into place when
      complete. A process killed midway leaves no step that `latest_step` reports or `restore`
      reads; opening the directory again removes the leftovers (in the background: the
      first save waits for it).
    - **Checked.** `restore` checks the saved paths, dtypes and shapes against `like` before
      reading, and each array against its checksum after: an error names the first difference.

    - **One writer.** One process at a time may use a directory (opening it removes what
      killed saves left, which would include another process's save in progress). A
      `Checkpoints` holds the directory's lock file `.zoo-lock` (`fcntl.flock`) from opening
      to `close`; opening a directory that another process holds raises a `RuntimeError` at
      once, naming that process. The operating system releases the lock of a process that
      dies, so a killed run's directory is free again at once (no stale lock to remove).
    - **Failures named.** A save that fails to write (`OSError`, e.g. `ENOSPC` on a full
      disk) raises an `OSError` naming the directory and the step, from `save`, `wait` or
      `close`, whichever comes first after it; the steps saved before it stay intact.

    **Example:**

    ```python
    def step(state, batch):  # your training step
        return {"w": state["w"] - 0.1 * batch, "step": state["step"] + 1}

    state, history = {"w": jnp.zeros(3), "step": jnp.array(0)}, []
    checkpoints = zoo.Checkpoints("runs/x", every_steps=2, keep=3)
    if checkpoints.latest_step() is not None:  # resume
        state, extra = checkpoints.restore(like=state)
    for batch in jnp.ones((5, 3)):  # training
        state = step(state, batch)
        checkpoints.save(int(state["step"]), state, {"history": history})  # when due
    checkpoints.save(int(state["step"]), state, {"history": history}, force=True)
    checkpoints.close()
    ```
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        every_steps: IntLike | None = None,
        keep: IntLike | None = 3,
        async_save: bool = True,
    ):
        """**Arguments:**

        - `directory`: where the checkpoints live, one subdirectory per step; created if
          needed. Reopening a directory resumes it: its steps are found and kept.
        - `every_steps`: `save` writes a checkpoint only when at least this many steps have
          passed since the latest one (`force=True` overrides). `None`: whenever called.
        - `keep`: how many of the latest checkpoints to keep; older ones are deleted after
          each save. `None` keeps all.
        - `async_save`: write in a background thread (`True`), or before `save` returns.
        """
        example = "zoo.Checkpoints('runs/x', every_steps=1000, keep=3)"
        directory = _checks.path("directory", directory, example=example)
        every_steps = _optional_positive("every_steps", every_steps, example)
        keep = _optional_positive("keep", keep, example)
        async_save = _checks.boolean("async_save", async_save, example=example)
        self.directory = directory.absolute()
        if self.directory.exists() and not self.directory.is_dir():
            raise ValueError(
                f"directory must be a folder for checkpoints; {self.directory} is a file. "
                "Pass a new or empty folder, e.g. zoo.Checkpoints('runs/x')."
            )
        self.every_steps = every_steps
        self._lock = _lock(self.directory)
        try:
            self._manager = _manager(self.directory, keep, async_save)
        except BaseException:
            self._release()
            raise
        self._staging = Staging()
        self._async_save = async_save
        self._writing: int | None = None  # the step of the save last started

    def latest_step(self) -> int | None:
        """The newest step saved, or `None` when there is none. A save still being written in the
        background counts (`restore` waits for it); a killed one never does."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """The steps saved and kept, oldest first."""
        return sorted(self._manager.all_steps())

    def should_save(self, step: IntLike) -> bool:
        """Whether `save(step, ...)` would write a checkpoint: `step` is newer than the latest
        and, with `every_steps`, at least that many steps after it (or after step 0)."""
        step = _checked_step(step)
        latest = self.latest_step()
        if latest is not None and step <= latest:
            return False
        return self.every_steps is None or step - (latest or 0) >= self.every_steps

    def save(
        self, step: IntLike, state: PyTree, extra: dict | None = None, *, force: bool = False
    ) -> bool:
        """Saves `state` and `extra` as the checkpoint of `step`, when due.

        **Arguments:**

        - `step`: the training step the state is at; steps increase from save to save.
        - `state`: the training state, a [`zoo.TrainState`][] or any pytree of arrays.
        - `extra`: JSON-serialisable data saved with it (NumPy scalars are converted), e.g.
          the history so far and the data order; `restore` returns it.
        - `force`: save even if fewer than `every_steps` steps have passed.

        **Returns:**

        `True` if a checkpoint was written (or, asynchronously, started), `False` if it was not
        due or `step` is already saved.

        **Raises:**

        `ValueError` if the directory already holds a step newer than `step` (a new run in an
        old directory: resume from it, or use another directory).
        """
        step = _checked_step(step)
        extra = _checked_extra(extra)
        latest = self.latest_step()
        if latest is not None and step < latest:
            raise ValueError(
                f"{self.directory} already holds a checkpoint at step {latest}, newer than "
                f"step={step}: resume from it (restore), or save to another directory."
            )
        if not (self.should_save(step) or (force and step != latest)):
            return False
        # A blocking save needs no copy. An asynchronous one copies into the previous one's
        # copies, so it waits for that one to be written (as Orbax's save would, next).
        self.wait()
        staging = self._staging if self._async_save else None
        item, manifest = store.to_store(state, argument="state", staging=staging)
        meta = {
            "format": _FORMAT,
            "class": name_of(type(state)),
            "step": step,
            "manifest": manifest,
            "extra": extra,
        }
        args = store.orbax().args
        self._writing = step
        with self._naming_failures():
            self._manager.save(
                step,
                args=args.Composite(state=store.save_args(item), meta=args.JsonSave(meta)),
                force=True,  # the decision is ours, above
            )
        return True

    def restore(self, like: PyTree, *, step: IntLike | None = None) -> tuple[PyTree, dict | None]:
        """Restores a checkpoint into the structure of `like`.

        **Arguments:**

        - `like`: a state of the same structure: e.g. the freshly initialised training state,
          or its shapes from `eqx.filter_eval_shape`. Its static parts and non-array leaves
          are kept; each array is replaced by one of the same kind (JAX array, NumPy array or
          typed PRNG key).
        - `step`: which checkpoint; the latest complete one by default.

        **Returns:**

        `(state, extra)`, bit for bit as saved.

        **Raises:**

        `FileNotFoundError` when there is no checkpoint (or not that `step`); `ValueError` when
        the checkpoint does not match `like` or is damaged, naming the first array that
        differs.
        """
        self.wait()
        step = self._step_to_restore(step)
        where = f"the checkpoint at {self.directory / str(step)}"
        meta = self._read_meta(step, where)
        store.check_class(meta["class"], like, where)
        args = store.orbax().args

        def read(item, restore_args):
            state = store.restore_args(item, restore_args)
            return self._manager.restore(step, args=args.Composite(state=state))["state"]

        return store.from_store(like, meta["manifest"], read, where), meta["extra"]

    def _step_to_restore(self, step: int | None) -> int:
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no complete checkpoint in {self.directory}.")
        elif _checked_step(step) not in self.all_steps():
            raise FileNotFoundError(
                f"no checkpoint of step {step} in {self.directory}; it has {self.all_steps()}."
            )
        return step

    def _read_meta(self, step: int, where: str) -> dict:
        args = store.orbax().args
        try:
            meta = self._manager.restore(step, args=args.Composite(meta=args.JsonRestore()))["meta"]
            if meta["format"] != _FORMAT or not isinstance(meta["manifest"], list):
                raise ValueError(f"unknown format {meta['format']!r}")
        except Exception as error:  # a missing or garbled JSON item: Orbax raises many kinds
            raise ValueError(f"{where} is damaged: its metadata cannot be read: {error}") from error
        return meta

    def wait(self) -> None:
        """Blocks until every save started has been written (and raises if one failed)."""
        with self._naming_failures():
            self._manager.wait_until_finished()

    @contextlib.contextmanager
    def _naming_failures(self):
        """An `OSError` of a save (a full disk, say) re-raised naming the directory and step;
        Orbax's own message names neither, and an asynchronous one surfaces a step later."""
        try:
            yield
        except Exception as error:
            cause = _os_error_in(error)
            if cause is None:
                raise
            step, self._writing = self._writing, None
            reason = "no space left on device" if cause.errno == errno.ENOSPC else cause.strerror
            raise OSError(
                cause.errno,
                f"saving the checkpoint of step {step} in {self.directory} failed: {reason} "
                f"({cause}). The steps saved before it are intact; free space (or fix the "
                "folder) and resume from the latest one.",
            ) from error

    def close(self) -> None:
        """Waits for the saves in flight, then releases Orbax's resources, the host copies and
        the directory's lock."""
        try:
            with self._naming_failures():
                self._manager.close()
        finally:
            self._staging.clear()
            self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> "Checkpoints":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpoints({str(self.directory)!r}, every_steps={self.every_steps})"


def _lock(directory: pathlib.Path) -> FolderLock | None:
    """The directory's lock, taken by the one process that writes the checkpoint's files
    (with several processes, Orbax has the first one write what is shared)."""
    if jax.process_index() != 0:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    return FolderLock(directory)


def _os_error_in(error: BaseException) -> OSError | None:
    """The `OSError` that `error` is, or was raised from (Orbax wraps its threads' errors)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno is not None:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _manager(directory: pathlib.Path, keep: int | None, async_save: bool):
    ocp = store.orbax()
    policies = ocp.checkpoint_managers
    return ocp.CheckpointManager(
        directory,
        item_handlers={"state": store.array_handler(), "meta": ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(
            preservation_policy=None if keep is None else policies.LatestN(keep),  # None: all
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,  # what a killed save left behind
            create=True,
        ),
    )


def _optional_positive(name: str, value, example: str) -> int | None:
    if value is None:
        return None
    return _checks.integer(
        name, value, minimum=1, expected="None or a positive int", example=example
    )


def _checked_step(step) -> int:
    try:
        step = operator.index(step)
    except TypeError:
        raise TypeError(f"step must be an int; got {step!r}.") from None
    if step < 0:
        raise ValueError(f"step must be >= 0; got {step}.")
    return step


def _checked_extra(extra: Any) -> Any:
    """`extra` as it will come back from JSON; a `TypeError` naming it if it cannot."""
    try:
        return json.loads(json.dumps(extra, default=_scalar))
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"extra must be JSON-serialisable (dicts, lists, numbers, strings): {error}"
        ) from None


def _scalar(value):
    """NumPy and JAX scalars (a loss, say) as Python numbers."""
    if isinstance(value, np.generic | np.ndarray | jax.Array) and np.ndim(value) == 0:
        return np.asarray(value).item()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")
