"""The callback protocol of `zoo.train`, and the callbacks that show a run: progress, a best model.

A callback is an immutable option (an `equinox.Module`) with explicit state, as optax's
`init`/`update`: `init` makes its state at the start of a run, `after_chunk` and
`after_epoch` return the new one (and, after an epoch, whether to stop), `close` ends it.
The loop hands each callback what it needs as arguments; no callback reads or writes another's
state, or the loop's. Besides, a callback declares what it adds to the run record (`record`,
checked on resume), what it keeps in a training checkpoint (`saved`/`restored`), and what it
adds to the history at the end (`summary`).
"""

import math
import sys
import time
from typing import Any, NamedTuple

import equinox as eqx
from tqdm.auto import tqdm

from .. import _checks
from .._custom_types import PyTree


class RunInfo(NamedTuple):
    """What a callback knows at the start of a run.

    - `epochs`: the epochs the run is asked for.
    - `steps_per_epoch`: steps in an epoch (`None` for an iterable of unknown length).
    - `eval_names`: the figures each epoch records in `history["eval"]`.
    - `resumed`: whether the run continues a checkpoint (`history` then holds its epochs).
    - `history`: the history so far (a copy, empty for a new run).
    - `model`: the model at the start.
    """

    epochs: int
    steps_per_epoch: int | None
    eval_names: tuple[str, ...]
    resumed: bool
    history: dict
    model: eqx.Module


class ChunkInfo(NamedTuple):
    """What a callback sees after a chunk of steps (without waiting for the device):
    `epoch` (1-based, the one running), `steps` (steps of it taken), `loss` (the running mean
    training loss of the epoch, up to a chunk behind)."""

    epoch: int
    steps: int
    loss: float


class EpochInfo(NamedTuple):
    """What a callback sees after an epoch: `epoch` (1-based), `step` (optimizer steps so
    far), `history` (a copy, this epoch recorded) and `model` (the model after the epoch; its
    arrays are the callback's to keep)."""

    epoch: int
    step: int
    history: dict
    model: eqx.Module


class Callback(eqx.Module):
    """Base class of `zoo.train`'s callbacks: override what you need.

    A callback is an immutable `equinox.Module` (its fields are its options, checked in
    `__check_init__`); what changes during a run is its *state*, which `init` makes and the
    other methods take and return, so one callback object can serve several runs.

    - `init(info: RunInfo) -> state`: at the start, before anything is written.
    - `after_chunk(state, info: ChunkInfo) -> state`: after each chunk of steps.
    - `after_epoch(state, info: EpochInfo) -> (state, stop)`: after each epoch is recorded;
      `stop=True` ends training cleanly (`history["stop_reason"]` then names the callback).
    - `adjust(state, train_state) -> train_state`: after `after_epoch`, the training state
      (a [`zoo.TrainState`][]) the next epoch starts from, e.g. with a learning rate changed in
      the state of an `optax.inject_hyperparams` optimizer. It is checkpointed as changed, so a
      resumed run continues exactly; the default returns it unchanged.
    - `close(state)`: at the end, however the run ends (also on an error).
    - `record() -> dict`: options that change what training computes, kept in the run record
      of a checkpointed run: a resumed run must give the same.
    - `saved(state) -> pytree | None` and `restored(state, saved, history) -> state`: what a
      training checkpoint holds of the state, and the state of a resumed run from it and the
      history of its epochs.
    - `summary(state) -> dict`: entries added to the returned history.
    - `final_model(state, model) -> model`: the model `zoo.train` returns.

    **Example:**

    A callback that stops once the training loss is below a threshold:

    ```python
    class StopBelow(zoo.Callback):
        threshold: float

        def after_epoch(self, state, info):
            return state, info.history["train"]["loss"][-1] < self.threshold

    model = zoo.MLP(in_size=64, out_size=10, hidden=(32,), key=jax.random.key(0))
    model, history = zoo.train(model, zoo.data.digits("train"), epochs=50,
                               callbacks=[StopBelow(0.5)])
    print(history["stop_reason"])  # "StopBelow"
    ```
    """

    def init(self, info: RunInfo) -> Any:
        return None

    def after_chunk(self, state: Any, info: ChunkInfo) -> Any:
        return state

    def after_epoch(self, state: Any, info: EpochInfo) -> tuple[Any, bool]:
        return state, False

    def adjust(self, state: Any, train_state: Any) -> Any:
        return train_state

    def close(self, state: Any) -> None:
        return None

    def record(self) -> dict:
        return {}

    def saved(self, state: Any) -> PyTree | None:
        return None

    def restored(self, state: Any, saved: PyTree | None, history: dict) -> Any:
        return state

    def summary(self, state: Any) -> dict:
        return {}

    def final_model(self, state: Any, model: eqx.Module) -> eqx.Module:
        return model

    @property
    def name(self) -> str:
        """How `history["stop_reason"]` names this callback when it stops training."""
        return type(self).__name__


def epoch_figures(history: dict, index: int = -1) -> dict:
    """Epoch `index`'s figures, flat: `{"epoch", "step", "time", "train/loss", "eval/..."}`."""
    figures = {name: history[name][index] for name in ("epoch", "step", "time")}
    for group in ("train", "eval"):
        figures |= {f"{group}/{name}": values[index] for name, values in history[group].items()}
    return figures


def _brief(history: dict) -> str:
    figures = {"loss": history["train"]["loss"][-1]}
    figures |= {f"eval {name}": values[-1] for name, values in history["eval"].items()}
    return "  ".join(f"{name} {value:.4g}" for name, value in figures.items())


class ProgressBar(Callback):
    """Shows training as it goes: a bar per epoch on a terminal, a line per epoch elsewhere.

    On a terminal (stderr is a TTY) a tqdm bar counts the steps of each epoch, shows the
    running loss, and stays as the epoch's line with its figures; when output goes to a file or
    a pipe, each epoch prints one line (`epoch 3/20  loss 0.1203  eval accuracy 0.9611
    (0.41s)`), so logs stay readable. `zoo.train` uses `ProgressBar()` when `callbacks` is not
    given.

    **Arguments:**

    - `bar`: `True` for the bar, `False` for the lines, `None` (default): the bar on a terminal.
    - `file`: where to write (default: `sys.stderr`).
    - `line`: `line(history) -> str`, the text of an epoch's line, in place of the default;
      with the bar, each epoch's bar gives way to this line when the epoch ends.
    """

    bar: bool | None = None
    file: Any = None
    line: Any = None

    def __check_init__(self):
        if self.bar is not None:
            _checks.boolean("bar", self.bar, example="zoo.ProgressBar(bar=False)")

    def _file(self):
        return sys.stderr if self.file is None else self.file

    def init(self, info: RunInfo) -> dict:
        terminal = self._file().isatty() if hasattr(self._file(), "isatty") else False
        use_bar = terminal if self.bar is None else self.bar
        # The bar appears at the epoch's first report, timed from the epoch's start.
        return {"info": info, "bar": None, "use_bar": use_bar, "start": time.time()}

    def _bar(self, state: dict, epoch: int) -> dict:
        if state["bar"] is None:
            info = state["info"]
            state = state | {
                "bar": tqdm(
                    total=info.steps_per_epoch,
                    desc=f"epoch {epoch}/{info.epochs}",
                    unit="step",
                    leave=self.line is None,  # else the epoch's line takes its place
                    file=self._file(),
                )
            }
            state["bar"].start_t = state["start"]  # tqdm's clock is time.time
        return state

    def after_chunk(self, state: dict, info: ChunkInfo) -> dict:
        if not state["use_bar"]:
            return state
        state = self._bar(state, info.epoch)
        bar = state["bar"]
        bar.update(info.steps - bar.n)
        if math.isfinite(info.loss):
            bar.set_postfix_str(f"loss {info.loss:.4g}")
        return state

    def after_epoch(self, state: dict, info: EpochInfo) -> tuple[dict, bool]:
        epochs = state["info"].epochs
        line = f"{_brief(info.history)}  ({info.history['time'][-1]:.2f}s)"
        if state["use_bar"]:
            state = self._bar(state, info.epoch)
            if self.line is None:
                state["bar"].set_postfix_str(line)
            state["bar"].close()
            state = state | {"bar": None, "start": time.time()}
            if self.line is None:
                return state, False
        if self.line is not None:
            print(self.line(info.history), file=self._file(), flush=True)
        else:
            print(f"epoch {info.epoch}/{epochs}  {line}", file=self._file(), flush=True)
        return state, False

    def close(self, state: dict) -> None:
        if state["bar"] is not None:
            state["bar"].close()
