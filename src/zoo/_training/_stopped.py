"""The errors with which `zoo.train` stops early, carrying the model and history that trained."""

import equinox as eqx


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
