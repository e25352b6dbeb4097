"""How an epoch runs: fused on the device, step by step from the host, or from an iterable.

`epoch_runner` picks one for the data and the devices; `zoo.train` calls its `run` per epoch.
"""

import itertools
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Literal, NamedTuple, Protocol, runtime_checkable

import equinox as eqx
import jax
import numpy as np

from .. import _checks
from .._custom_types import Batch, Dataset, IntLike
from ._data import checked_dataset, gather, host_rows, nbytes, num_examples
from ._step import Programs, StepTotals, TrainState
from ._strategy import fits_on_devices

# Each compiled run of steps costs a dispatch and a wait on the host, about the same at any
# batch size; so a chunk is sized by examples, not by a share of the epoch: 2**16 examples keep
# dispatch a few percent of a chunk from batch 32 (2048 steps) to 1024 (64), while a chunk of
# a model of real size still takes about a second or less, which keeps progress, Ctrl-C and
# checkpoints responsive (benchmarks/train_epoch.py).
_EXAMPLES_PER_CHUNK = 2**16
_MIN_STEPS_PER_CHUNK = 32
# A chunk of a slow model is shortened to about this long, so that progress, Ctrl-C and the
# host's view of the run stay responsive (`_Pace`).
_SECONDS_PER_CHUNK = 1.0
_ITERABLE_STEPS_PER_REPORT = 50


class Loop(eqx.Module):
    """How `zoo.train`'s epochs run: batching at the epoch's end, non-finite steps, the
    compiled chunks of steps, and the evaluation's batch size.

    **Arguments:**

    - `last_batch`: `"keep"` takes the last, smaller batch of an epoch as a step of its own;
      `"drop"` skips it (`history["skipped_examples_per_epoch"]` says how many examples).
      Part of the run record.
    - `on_nonfinite`: `"raise"` (default) stops training with a [`zoo.NonFiniteLossError`][]
      naming the first step whose loss or gradient is not finite, before that epoch is
      recorded or checkpointed; the error carries the last good model and history. `"skip"`
      leaves the model and optimizer state unchanged for such a step and counts it in
      `history["train"]["nonfinite_steps"]`. Part of the run record.
    - `fused`: force (`True`) or forbid (`False`) the fused on-device epoch; `None` decides by
      whether the dataset fits in device memory.
    - `steps_per_chunk`: steps per compiled run (and per progress update); by default enough
      for 65536 examples (at least 32 steps), so that a dispatch costs a few percent of a
      chunk at any batch size.
    - `eval_batch_size`: batch size of the per-epoch evaluation.
    - `accumulate`: micro-batches per optimizer step: each batch (which `accumulate` must
      divide) is taken as `accumulate` slices one after another, with the activations of only
      one slice in memory, weighted by their count of loss terms (the loss's `count_terms`,
      else their examples): exactly the step of the whole batch, to float rounding. Refused
      for a loss whose negatives come from the batch (`negatives_from_batch`) and for
      `zoo.sparse` optimizers. Part of the run record.
    - `grad_norm`: also record `history["train"]["grad_norm"]`, the mean over each epoch's
      steps of the gradients' global norm. It costs one more pass over the gradients per
      step (about 15% of a small model's step at batch 32 on CPU), so it is off by default;
      a non-finite gradient is caught without it, by the next step's loss or by the check of
      the model at the end of each chunk of steps. Part of the run record.
    """

    last_batch: Literal["keep", "drop"] = "keep"
    on_nonfinite: Literal["raise", "skip"] = "raise"
    fused: bool | None = None
    steps_per_chunk: IntLike | None = None
    eval_batch_size: IntLike = 1024
    accumulate: IntLike = 1
    grad_norm: bool = False

    def __check_init__(self):
        _checks.one_of(
            "last_batch", self.last_batch, ("keep", "drop"), example="zoo.Loop(last_batch='drop')"
        )
        _checks.one_of(
            "on_nonfinite",
            self.on_nonfinite,
            ("raise", "skip"),
            example="zoo.Loop(on_nonfinite='skip')",
        )
        if self.fused is not None:
            _checks.boolean("fused", self.fused, example="zoo.Loop(fused=True)")
        _checks.optional_positive_int(
            "steps_per_chunk", self.steps_per_chunk, example="zoo.Loop(steps_per_chunk=100)"
        )
        _checks.positive_int(
            "eval_batch_size", self.eval_batch_size, example="zoo.Loop(eval_batch_size=1024)"
        )
        _checks.boolean("grad_norm", self.grad_norm, example="zoo.Loop(grad_norm=True)")

    def record(self) -> dict:
        return {
            "last_batch": self.last_batch,
            "on_nonfinite": self.on_nonfinite,
            "accumulate": int(self.accumulate),
            "grad_norm": bool(self.grad_norm),
        }


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
        chunk = steps_per_chunk or max(_MIN_STEPS_PER_CHUNK, -(-_EXAMPLES_PER_CHUNK // batch_size))
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
        self, dynamic: TrainState, totals: StepTotals, hooks: "Hooks"
    ) -> tuple[TrainState, StepTotals]:
        """Runs the rest of the epoch that `dynamic` is in, from its batch position."""
        raise NotImplementedError


class _Pace:
    """The length of the next fused chunk: the examples-based default, shortened when chunks
    take longer than `_SECONDS_PER_CHUNK` (a slow model), never lengthened.

    A chunk's time is that between the ends of successive chunks, read on the chunk *before*
    the one just dispatched, so the device always has work queued and never waits on the host.
    The programs take the number of steps as an argument: a new length compiles nothing, and
    gives the same steps bit for bit.
    """

    def __init__(self, steps: int, *, adaptive: bool):
        self.steps = steps
        self._adaptive = adaptive
        self._dispatched: deque = deque()
        self._last_end: float | None = None

    def start(self) -> None:
        """A new epoch: the time between epochs (evaluation, callbacks) is no chunk's."""
        self._dispatched.clear()
        self._last_end = None

    def dispatched(self, totals: StepTotals, steps: int) -> None:
        if not self._adaptive:
            return
        self._dispatched.append((totals, steps))
        if len(self._dispatched) < 2:
            return
        previous, previous_steps = self._dispatched.popleft()
        jax.block_until_ready(previous)
        end = time.perf_counter()
        if self._last_end is not None:  # the first chunk's time includes compiling: not used
            seconds = end - self._last_end
            if seconds > _SECONDS_PER_CHUNK:
                shorter = int(previous_steps * _SECONDS_PER_CHUNK / seconds)
                self.steps = max(1, min(self.steps, shorter))
        self._last_end = end


class _FusedEpochs(EpochRunner):
    """The dataset lives on the device; each chunk of steps runs as one program."""

    def __init__(
        self, arrays, programs: Programs, layout: _EpochLayout, placement, steps_per_chunk=None
    ):
        self.arrays = arrays
        self._data = placement.dataset(arrays)
        self._count = num_examples(arrays)
        self._programs = programs
        self._layout = layout
        self.steps_per_epoch = layout.steps
        self.skipped_per_epoch = layout.skipped
        self._pace = _Pace(layout.chunk, adaptive=steps_per_chunk is None)

    def run(self, dynamic, totals, hooks):
        layout = self._layout
        order = self._programs.epoch_order(dynamic, self._count)
        report = _ChunkReport(hooks, int(dynamic.batch))
        batch, step = int(dynamic.batch), int(dynamic.step)
        self._pace.start()
        while batch < layout.full_batches:
            steps = min(self._pace.steps, layout.full_batches - batch, _until(hooks, step))
            dynamic, totals = self._programs.run_steps(dynamic, totals, self._data, order, steps)
            self._pace.dispatched(totals, steps)
            report.dispatched(totals, steps)
            batch, step = batch + steps, step + steps
            hooks.after_steps(step, dynamic, totals)
        if layout.remainder:
            last = gather(self._data, order[layout.full_batches * layout.batch_size :])
            dynamic, totals = self._programs.one_step(dynamic, totals, last)
            report.dispatched(totals, 1)
        report.flush()
        return dynamic, totals


@runtime_checkable
class Hooks(Protocol):
    """What an epoch runner calls between its compiled runs (the loop's checkpoints and
    callbacks)."""

    def steps_until_due(self, step: int) -> int | None:
        """Steps a compiled run may take before a save is due (`None`: no limit)."""

    def after_steps(self, step: int, dynamic: TrainState, totals: StepTotals) -> None:
        """After the runs up to `step`, with their state (a save may be due)."""

    def after_chunk(self, steps: int, totals: StepTotals) -> None:
        """`steps` of the epoch are done; `totals` are theirs (ready, or nearly)."""


def _until(hooks: Hooks, step: int) -> int:
    """Steps until the next checkpoint is due, or effectively no limit."""
    due = hooks.steps_until_due(step)
    return 2**31 - 1 if due is None else due


class _HostEpochs(EpochRunner):
    """The dataset stays on the host; each step's batch is gathered there and prefetched."""

    def __init__(self, arrays, programs: Programs, layout: _EpochLayout, placement):
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

    def run(self, dynamic, totals, hooks):
        order = np.asarray(self._programs.epoch_order(dynamic, self._count))
        batches = self._batches(order, int(dynamic.batch))
        return _run_batches(self._programs, dynamic, totals, batches, hooks, self._layout.chunk)


class _IterableEpochs(EpochRunner):
    """`data` is an iterable of batches, iterated afresh each epoch."""

    def __init__(self, data: Iterable[Dataset], programs: Programs, steps_per_chunk, placement):
        self._data = data
        self._placement = placement
        self._programs = programs
        self._chunk = steps_per_chunk or _ITERABLE_STEPS_PER_REPORT
        self.steps_per_epoch = len(data) if hasattr(data, "__len__") else None

    def run(self, dynamic, totals, hooks):
        # A resumed epoch skips the batches it already took: the iterable must repeat its order.
        remaining = itertools.islice(self._data, int(dynamic.batch), None)
        batches = (self._placement.batch(_checked_batch(batch)) for batch in remaining)
        dynamic, totals = _run_batches(self._programs, dynamic, totals, batches, hooks, self._chunk)
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


def _run_batches(programs: Programs, dynamic, totals, batches: Iterable[Batch], hooks, chunk):
    """Runs a step per batch, with the next batch already on its way to the device."""
    report = _ChunkReport(hooks)
    step = int(dynamic.step)
    ahead = deque()

    def take_step(dynamic, totals):
        dynamic, totals = programs.one_step(dynamic, totals, ahead.popleft())
        hooks.after_steps(step + 1, dynamic, totals)
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
    """Chunk reports that never stall the device.

    Reading a total waits for the program that computes it. So when a chunk has been
    dispatched, the report gives the totals of the chunk *before* it, which are ready or nearly
    so while the device already works on the next one.
    """

    def __init__(self, hooks: Hooks, start: int = 0):
        self._hooks = hooks
        self._pending: tuple[StepTotals, int] | None = None
        self.steps = start

    def dispatched(self, totals: StepTotals, steps: int) -> None:
        self.flush()
        self._pending = (totals, self.steps + steps)
        self.steps += steps

    def flush(self) -> None:
        if self._pending is None:
            return
        totals, steps = self._pending
        self._pending = None
        self._hooks.after_chunk(steps, totals)


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
    if fused:
        return _FusedEpochs(arrays, programs, layout, placement, steps_per_chunk)
    return _HostEpochs(arrays, programs, layout, placement)
