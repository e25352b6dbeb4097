"""The callback protocol of `zoo.train`, and the callbacks zoo ships: `ProgressBar`,
`EarlyStopping`, `ModelCheckpoint` and `Logger`.

A callback is an immutable option (an `equinox.Module`) with explicit state, as optax's
`init`/`update`: `init` makes its state at the start of a run, `after_chunk` and
`after_epoch` return the new one (and, after an epoch, whether to stop), `close` ends it.
The loop hands each callback what it needs as arguments; no callback reads or writes another's
state, or the loop's. Besides, a callback declares what it adds to the run record (`record`,
checked on resume), what it keeps in a training checkpoint (`saved`/`restored`), and what it
adds to the history at the end (`summary`).
"""

import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import equinox as eqx
from tqdm.auto import tqdm

from .. import _checks
from .._custom_types import IntLike, PyTree, RealLike
from .._io._serialization import save
from ..metrics._metrics import direction


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


# Callbacks that watch one eval figure: `EarlyStopping` and `ModelCheckpoint`.
#
# Which epoch is best is a pure function of the monitored figure's per-epoch values, which the
# history holds (and checkpoints save), so a resumed run decides exactly as an uninterrupted
# one. Which way is better is declared, never guessed: zoo's own figures carry their direction
# (`zoo.metrics.direction`), and any other needs `mode`.


class Decision(NamedTuple):
    best_epoch: int  # 1-based; 0 while no epoch has improved on the start
    stop: bool


def decide(values: Sequence[float], mode: str, min_delta: float, patience: int) -> Decision:
    """The best epoch so far, and whether `patience` epochs in a row have not improved."""
    sign = 1.0 if mode == "min" else -1.0
    best, best_index, wait = math.inf, -1, 0
    for index, value in enumerate(values):
        if sign * value < best - min_delta:  # NaN never improves: the comparison is False
            best, best_index, wait = sign * value, index, 0
        else:
            wait += 1
    return Decision(best_epoch=best_index + 1, stop=wait >= max(patience, 1))


def _resolved_mode(who: str, monitor: str, mode: str | None) -> str:
    if not isinstance(monitor, str) or not monitor:
        raise TypeError(
            f"{who}'s monitor must name an eval figure such as 'accuracy'; got {monitor!r}. "
            f"For example zoo.{who}(monitor='accuracy')."
        )
    if mode not in (None, "min", "max"):
        raise ValueError(
            f"{who}'s mode must be 'min', 'max' or None; got {mode!r}. For example "
            f"zoo.{who}(monitor='accuracy', mode='max')."
        )
    known = direction(monitor)
    if mode is None and known is None:
        raise ValueError(
            f"{who}'s mode is needed for monitor={monitor!r}: it is not a figure zoo defines, so "
            f"whether more is better is yours to say: zoo.{who}(monitor={monitor!r}, "
            "mode='max') for a score, mode='min' for a loss."
        )
    if mode is not None and known is not None and mode != known:
        raise ValueError(
            f"{who}'s mode={mode!r} contradicts {monitor!r}, which is better when "
            f"{'higher' if known == 'max' else 'lower'}: use mode={known!r} or leave it None."
        )
    return mode or known


def _check_monitored(who: str, monitor: str, names: Sequence[str]) -> None:
    """Raises unless the evaluation records the monitored figure."""
    if monitor in names:
        return
    argument = f"zoo.{who}"
    if not names:
        raise ValueError(
            f"{argument} monitors {monitor!r}, but there is no evaluation: pass eval_data, "
            "validation_split (e.g. validation_split=0.1) or eval_fn."
        )
    produced = ", ".join(repr(name) for name in names)
    raise ValueError(
        f"{argument} monitors {monitor!r}, which the evaluation does not produce; it produces "
        f"{produced}. For example zoo.{who}(monitor={names[0]!r})."
    )


class EarlyStopping(Callback):
    """Stops `zoo.train` when an eval figure stops improving, and returns the best epoch's model.

    **Arguments:**

    - `monitor`: the eval figure to watch, as recorded in `history["eval"]`: a metric
        (`"accuracy"`, `"cross_entropy"`), `"loss"` (the training loss on the eval data), or
        a key of the dict `eval_fn` returns (`"ndcg@10"`).
    - `mode`: `"max"` if more is better, `"min"` if less. Zoo's own figures carry their
        direction (`zoo.metrics.direction`), so `None` serves for them; any other figure needs
        `mode` (it is never guessed from the name).
    - `patience`: stop once this many epochs in a row have not improved (`0` acts like `1`).
    - `min_delta`: an epoch improves only if it beats the best so far by more than this.
    - `restore_best`: return the best epoch's model (`True`) or the last epoch's.

    The best model is kept in each training checkpoint, so a resumed run stops at the same
    epoch with the same model, bit for bit; the monitored figure and these options are in the
    run record. `history["best_epoch"]` holds the best epoch (0: none beat the start) and
    `history["stop_reason"]` `"early_stopping"` or `"epochs"`.

    !!! example

        ```python
        model = zoo.MLP(in_size=64, out_size=10, hidden=(32,), key=jax.random.key(0))
        model, history = zoo.train(
            model, zoo.data.digits("train"), epochs=30, validation_split=0.1,
            callbacks=[zoo.EarlyStopping("accuracy", patience=3)],
        )
        ```
    """

    monitor: str
    mode: Literal["min", "max"] | None = None
    patience: IntLike = 3
    min_delta: RealLike = 0.0
    restore_best: bool = True

    def __check_init__(self):
        example = "zoo.EarlyStopping(monitor='accuracy', patience=3, min_delta=0.001)"
        _resolved_mode("EarlyStopping", self.monitor, self.mode)
        _checks.integer("EarlyStopping's patience", self.patience, example=example)
        if self.patience < 0:
            raise ValueError(
                f"EarlyStopping's patience must be >= 0 (epochs without improvement before "
                f"stopping); got {self.patience}. For example zoo.EarlyStopping("
                f"monitor={self.monitor!r}, patience=3)."
            )
        _checks.real("EarlyStopping's min_delta", self.min_delta, low=0.0, example=example)
        _checks.boolean("EarlyStopping's restore_best", self.restore_best, example=example)

    @property
    def name(self) -> str:
        return "early_stopping"

    @property
    def resolved_mode(self) -> str:
        return _resolved_mode("EarlyStopping", self.monitor, self.mode)

    def decision(self, history: dict) -> Decision:
        values = history["eval"].get(self.monitor, [])
        return decide(values, self.resolved_mode, float(self.min_delta), int(self.patience))

    def record(self) -> dict:
        return {
            "EarlyStopping.monitor": self.monitor,
            "EarlyStopping.mode": self.resolved_mode,
            "EarlyStopping.patience": int(self.patience),
            "EarlyStopping.min_delta": float(self.min_delta),
            "EarlyStopping.restore_best": self.restore_best,
        }

    def init(self, info: RunInfo) -> dict:
        _check_monitored("EarlyStopping", self.monitor, info.eval_names)
        best = eqx.filter(info.model, eqx.is_array) if self.restore_best else None
        return {"best_model": best, "decision": self.decision(info.history)}

    def after_epoch(self, state: dict, info: EpochInfo) -> tuple[dict, bool]:
        decision = self.decision(info.history)
        if self.restore_best and decision.best_epoch == info.epoch:
            state = state | {"best_model": eqx.filter(info.model, eqx.is_array)}
        return state | {"decision": decision}, decision.stop

    def saved(self, state: dict) -> Any:
        return state["best_model"]

    def restored(self, state: dict, saved: Any, history: dict) -> dict:
        return state | {"best_model": saved, "decision": self.decision(history)}

    def summary(self, state: dict) -> dict:
        decision = state["decision"]
        return {
            "best_epoch": decision.best_epoch,
            "stop_reason": "early_stopping" if decision.stop else "epochs",
        }

    def final_model(self, state: dict, model: eqx.Module) -> eqx.Module:
        if not self.restore_best or state["decision"].best_epoch == 0:
            return model
        return eqx.combine(state["best_model"], eqx.filter(model, eqx.is_array, inverse=True))


class ModelCheckpoint(Callback):
    """Saves the model after each epoch that improves the monitored figure (or after every
    epoch, with no `monitor`) as a plain [`zoo.save`][] folder, which `zoo.load(path)` opens
    by itself (for zoo's models; others load with `like=`).

    **Arguments:**

    - `path`: the folder of the saved model; a new or empty one (or that of the run being
      resumed). Each save replaces the previous one whole, atomically.
    - `monitor`: the eval figure that decides which epoch is best, as for
      [`zoo.EarlyStopping`][]; `None` saves every epoch's model.
    - `mode`: `"max"` or `"min"`, needed for a figure zoo does not define.
    - `min_delta`: an epoch improves only if it beats the best so far by more than this.

    !!! example

        ```python
        model = zoo.MLP(in_size=64, out_size=10, hidden=(32,), key=jax.random.key(0))
        zoo.train(model, zoo.data.digits("train"), epochs=3, validation_split=0.1,
                  callbacks=[zoo.ModelCheckpoint("models/best", monitor="accuracy")])
        best = zoo.load("models/best")
        ```
    """

    path: str | os.PathLike
    monitor: str | None = None
    mode: Literal["min", "max"] | None = None
    min_delta: RealLike = 0.0

    def __check_init__(self):
        example = "zoo.ModelCheckpoint('models/best', monitor='accuracy')"
        _checks.path("ModelCheckpoint's path", self.path, example=example)
        if self.monitor is not None:
            _resolved_mode("ModelCheckpoint", self.monitor, self.mode)
        _checks.real("ModelCheckpoint's min_delta", self.min_delta, low=0.0, example=example)

    def record(self) -> dict:
        if self.monitor is None:
            return {}
        return {
            "ModelCheckpoint.monitor": self.monitor,
            "ModelCheckpoint.mode": _resolved_mode("ModelCheckpoint", self.monitor, self.mode),
        }

    def init(self, info: RunInfo) -> None:
        if self.monitor is not None:
            _check_monitored("ModelCheckpoint", self.monitor, info.eval_names)
        folder = pathlib.Path(self.path)
        if not info.resumed and folder.is_dir() and any(folder.iterdir()):
            raise ValueError(
                f"ModelCheckpoint's path {folder} already holds files: a new run saves its "
                "model into a new or empty folder, so nothing saved before is replaced. For "
                "example zoo.ModelCheckpoint('models/run-2', monitor='accuracy')."
            )
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"ModelCheckpoint's path {folder} is a file; name a folder.")

    def after_epoch(self, state: None, info: EpochInfo) -> tuple[None, bool]:
        if self.monitor is not None:
            values = info.history["eval"][self.monitor]
            mode = _resolved_mode("ModelCheckpoint", self.monitor, self.mode)
            if decide(values, mode, float(self.min_delta), 1).best_epoch != info.epoch:
                return state, False
        save(self.path, info.model, overwrite=True)
        return state, False


# `zoo.Logger`: one JSON line per epoch, and TensorBoard event files when asked.
#
# Each run's logs are its own: a new run refuses a folder that holds another run's logs (before
# anything is trained), and a resumed run rewrites the file from its checkpoint's history, so
# each epoch appears once and nothing of another run is touched.


LOG_FILE = "history.jsonl"
_EVENTS = "events.out.tfevents"


def _summary_writer_class():
    try:
        from tensorboardX import SummaryWriter
    except ImportError as error:
        raise ImportError(
            "tensorboard=True writes event files with tensorboardX, which is not installed: "
            "`pip install 'equinox-zoo[tensorboard]'` (or `uv add tensorboardX`)."
        ) from error
    return SummaryWriter


class Logger(Callback):
    """Writes each epoch's figures to `log_dir/history.jsonl`, one JSON object a line
    (`{"epoch": 1, "step": ..., "time": ..., "train/loss": ..., "eval/accuracy": ...}`), and
    with `tensorboard=True` the same figures as TensorBoard event files (with `tensorboardX`:
    `pip install 'equinox-zoo[tensorboard]'`).

    **Arguments:**

    - `log_dir`: the run's folder for logs: a new or empty one, or one whose logs are those
      of the run being resumed. A folder with another run's logs is refused before training,
      so each run's logs stay apart.
    - `tensorboard`: also write TensorBoard event files.

    !!! example

        ```python
        model = zoo.MLP(in_size=64, out_size=10, hidden=(32,), key=jax.random.key(0))
        zoo.train(model, zoo.data.digits("train"), epochs=2,
                  callbacks=[zoo.Logger("runs/digits-1")])
        ```
    """

    log_dir: str | os.PathLike
    tensorboard: bool = False

    def __check_init__(self):
        _checks.path("log_dir", self.log_dir, example="zoo.Logger(log_dir='runs/x')")
        _checks.boolean("tensorboard", self.tensorboard, example="zoo.Logger('runs/x', True)")
        if self.tensorboard:
            _summary_writer_class()  # fail on a missing extra now, not after an epoch

    def init(self, info: RunInfo) -> dict:
        folder = pathlib.Path(self.log_dir)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"log_dir {folder} is a file; name a folder for the logs.")
        earlier = _logs_in(folder)
        if earlier and not info.resumed:
            raise ValueError(
                f"log_dir {folder} already holds the logs of another run ({earlier[0]}): a new "
                "run writes into a new or empty folder, so that no run's logs are overwritten "
                "or mixed. For example log_dir='runs/run-2'."
            )
        return {"written": False, "writer": None}

    def after_epoch(self, state: dict, info: EpochInfo) -> tuple[dict, bool]:
        folder = pathlib.Path(self.log_dir)
        if not state["written"]:  # this run's first epoch: the epochs before it come first
            folder.mkdir(parents=True, exist_ok=True)
            epochs = range(len(info.history["epoch"]) - 1)
            lines = "".join(json.dumps(epoch_figures(info.history, i)) + "\n" for i in epochs)
            (folder / LOG_FILE).write_text(lines)
            if self.tensorboard:
                # purge_step drops events of epochs past the checkpoint a resumed run starts from.
                writer = _summary_writer_class()(str(folder), purge_step=info.epoch)
                state = state | {"writer": writer}
            state = state | {"written": True}
        figures = epoch_figures(info.history)
        with (folder / LOG_FILE).open("a") as file:
            file.write(json.dumps(figures) + "\n")
        if state["writer"] is not None:
            for name, value in figures.items():
                if "/" in name:
                    state["writer"].add_scalar(name, value, info.epoch)
            state["writer"].add_scalar("time/seconds_per_epoch", figures["time"], info.epoch)
            state["writer"].flush()
        return state, False

    def close(self, state: dict) -> None:
        if state["writer"] is not None:
            state["writer"].close()


def _logs_in(folder: pathlib.Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(
        path.name for path in folder.iterdir() if path.name == LOG_FILE or _EVENTS in path.name
    )
