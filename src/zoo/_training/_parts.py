"""The callbacks of one run and their states: the loop's one place that calls them.

Each callback's state is held here and passed to it explicitly; a callback sees only what the
loop gives it (`RunInfo`, `ChunkInfo`, `EpochInfo`), never another callback.
"""

import copy

import equinox as eqx

from ._callbacks import Callback, ChunkInfo, EpochInfo, RunInfo
from ._step import StepTotals


class Parts:
    def __init__(self, run, model: eqx.Module, epochs: int, resumed: bool):
        self.callbacks = run.callbacks
        self._steps_per_epoch = run.runner.steps_per_epoch
        self.epoch = 0  # the epoch running, 1-based
        info = RunInfo(
            epochs=epochs,
            steps_per_epoch=run.runner.steps_per_epoch,
            eval_names=run.evaluation.names,
            resumed=resumed,
            history={"epoch": [], "step": [], "time": [], "train": {}, "eval": {}},
            model=model,
        )
        self._states = []
        for callback in self.callbacks:  # one at a time: a refusal leaves the rest unmade
            self._states.append(callback.init(info))

    def saved(self) -> dict:
        """What the callbacks keep in a checkpoint, by position."""
        parts = {
            str(i): c.saved(s)
            for i, (c, s) in enumerate(zip(self.callbacks, self._states, strict=False))
        }
        return {index: part for index, part in parts.items() if part is not None}

    def restore(self, saved: dict, history: dict) -> None:
        for index, callback in enumerate(self.callbacks):
            part = saved.get(str(index))
            self._states[index] = callback.restored(self._states[index], part, history)

    def after_chunk(self, steps: int, totals: StepTotals) -> None:
        examples = int(totals.examples)
        loss = float(totals.loss) / examples if examples else float("nan")
        info = ChunkInfo(self.epoch, steps, loss)
        self._states = [
            c.after_chunk(s, info) for c, s in zip(self.callbacks, self._states, strict=False)
        ]

    def after_epoch(self, info: EpochInfo) -> str | None:
        """Calls each callback; the name of the first that asks to stop, or None."""
        stopped = None
        for index, callback in enumerate(self.callbacks):
            mine = info._replace(history=copy.deepcopy(info.history))
            self._states[index], stop = callback.after_epoch(self._states[index], mine)
            if stop and stopped is None:
                stopped = callback.name
        return stopped

    def adjust(self, train_state):
        """The training state after each callback's `adjust`, in order."""
        for callback, state in zip(self.callbacks, self._states, strict=True):
            train_state = callback.adjust(state, train_state)
        return train_state

    def summary(self) -> dict:
        entries = {}
        for callback, state in zip(self.callbacks, self._states, strict=False):
            entries |= callback.summary(state)
        return entries

    def final_model(self, model: eqx.Module) -> eqx.Module:
        for callback, state in zip(self.callbacks, self._states, strict=False):
            model = callback.final_model(state, model)
        return model

    def close(self) -> None:
        for callback, state in zip(self.callbacks, self._states, strict=False):
            callback.close(state)

    def hooks(self, saver, extra):
        return _Hooks(self, saver, extra)


class _Hooks:
    """What the epoch runners call between compiled runs: the saver's checkpoints within an
    epoch, and the callbacks' `after_chunk`."""

    def __init__(self, parts: Parts, saver, extra):
        self._parts, self._saver, self._extra = parts, saver, extra
        # Reading a chunk's totals waits for it: only when some callback looks at chunks.
        self._chunks = any(type(c).after_chunk is not Callback.after_chunk for c in parts.callbacks)

    def steps_until_due(self, step: int) -> int | None:
        return self._saver.steps_until_due(step)

    def after_steps(self, step, dynamic, totals) -> None:
        self._saver.after_steps(step, dynamic, totals, self._extra)

    def after_chunk(self, steps: int, totals: StepTotals) -> None:
        if self._chunks:
            self._parts.after_chunk(steps, totals)
