"""Callbacks that watch one eval figure: `EarlyStopping` and `ModelCheckpoint`.

Which epoch is best is a pure function of the monitored figure's per-epoch values, which the
history holds (and checkpoints save), so a resumed run decides exactly as an uninterrupted
one. Which way is better is declared, never guessed: zoo's own figures carry their direction
(`zoo.metrics.direction`), and any other needs `mode`.
"""

import math
import os
import pathlib
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import equinox as eqx

from .. import _checks
from .._custom_types import IntLike, RealLike
from .._io._serialization import save
from ..metrics._metrics import direction
from ._callbacks import Callback, EpochInfo, RunInfo


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
