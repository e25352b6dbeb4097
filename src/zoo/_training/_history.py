"""The training history: plain lists of per-epoch figures, ready for `json.dump`."""

import warnings

from .._custom_types import PyTree
from ._step import StepTotals, injected_learning_rate, loss_scale


def new_history() -> dict:
    return {"epoch": [], "step": [], "time": [], "train": {}, "eval": {}}


def record_epoch(
    history: dict,
    *,
    epoch: int,
    step: int,
    seconds: float,
    totals: StepTotals,
    opt_state: PyTree,
    eval_metrics: dict[str, float],
) -> None:
    """Appends one epoch's figures to `history` (in place)."""
    history["epoch"].append(epoch)
    history["step"].append(step)
    history["time"].append(seconds)
    train = {
        "loss": float(totals.loss) / max(int(totals.examples), 1),
        "grad_norm": float(totals.grad_norm) / max(int(totals.steps), 1),
        "nonfinite_steps": int(totals.nonfinite_steps),
    }
    if int(totals.steps) == 0:
        # Nothing trained: a loss of 0.0 would read as a perfect epoch.
        train["loss"] = train["grad_norm"] = float("nan")
        warnings.warn(
            f"epoch {epoch}: all of its {int(totals.nonfinite_steps)} steps had a non-finite loss "
            "or gradient and were skipped (on_nonfinite='skip'), so nothing trained; its loss "
            "and grad_norm are recorded as nan. Lower the learning rate, clip gradients, or "
            "check the data for non-finite values.",
            RuntimeWarning,
            stacklevel=2,
        )
    learning_rate = current_learning_rate(opt_state)
    if learning_rate is not None:
        train["learning_rate"] = learning_rate
    scale = loss_scale(opt_state)
    if scale is not None:  # float16: the scale at the epoch's end, and the steps it skipped
        train["loss_scale"] = float(scale)
        train["loss_scale_overflows"] = int(opt_state.overflows)
    for name, value in train.items():
        history["train"].setdefault(name, []).append(value)
    for name, value in eval_metrics.items():
        history["eval"].setdefault(name, []).append(value)


def current_learning_rate(opt_state: PyTree) -> float | None:
    """The learning rate of an optimizer wrapped in `optax.inject_hyperparams`, else None."""
    learning_rate = injected_learning_rate(opt_state)
    return None if learning_rate is None else float(learning_rate)
