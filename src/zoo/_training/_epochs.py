"""How an epoch runs: fused on the device, step by step from the host, or from an iterable.

`epoch_runner` picks one for the data and the devices; `zoo.train` calls its `run` per epoch.
"""

import itertools
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

import numpy as np

from .._custom_types import Batch, Dataset
from ._checkpointing import Saver
from ._dataset import checked_dataset, gather, host_rows, nbytes, num_examples
from ._fused import fits_on_devices
from ._programs import Programs, StepTotals
from ._sharded import Placement
from ._state import TrainState

_PROGRESS_UPDATES_PER_EPOCH = 10
# Each compiled run of steps costs a dispatch and a wait on the host: on a short epoch a tenth
# of it (2 of 16 steps, say) made zoo.train 1.3x slower than one program for the epoch.
_MIN_STEPS_PER_CHUNK = 32
_ITERABLE_STEPS_PER_REPORT = 50


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


class EpochRunner:
    """Runs one epoch, fused or step by step; built once per training run."""

    steps_per_epoch: int | None = None
    skipped_per_epoch: int = 0
    arrays: dict | None = None  # the whole dataset, when there is one (not for iterables)

    def run(
        self, dynamic: TrainState, totals: StepTotals, bar, saver: Saver
    ) -> tuple[TrainState, StepTotals]:
        """Runs the rest of the epoch that `dynamic` is in, from its batch position."""
        raise NotImplementedError


class _FusedEpochs(EpochRunner):
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


class _HostEpochs(EpochRunner):
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


class _IterableEpochs(EpochRunner):
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


def epoch_runner(
    data, programs, batch_size, last_batch, fused, steps_per_chunk, placement
) -> EpochRunner:
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
