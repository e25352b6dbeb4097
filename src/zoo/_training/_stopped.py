"""The errors with which `zoo.train` stops early, carrying the model and history that trained."""

import contextlib
from typing import NamedTuple

import equinox as eqx

from ._step import SCHEDULE_ERROR, Programs, StepTotals


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
    """Raised by `zoo.train` with `on_nonfinite="raise"` when a step's loss or gradient is
    not finite: a `FloatingPointError` and a [`zoo.TrainingStopped`][], whose `model` and
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
            f"the loss became non-finite (nan or inf) at step {step}. Lower the learning rate, "
            "clip gradients with optax.chain(optax.clip_by_global_norm(1.0), ...), or check the "
            "data for non-finite values. The exception's .model and .history are those of the "
            f"last epoch before it (epoch {len(good.history['epoch'])}).",
            model=programs.model_of(good.model),
            history=good.history,
        )
