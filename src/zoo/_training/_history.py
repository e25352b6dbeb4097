"""The training history: plain lists of per-epoch figures, ready for `json.dump`."""

import jax

from .._custom_types import PyTree
from ._precision import loss_scale
from ._programs import StepTotals


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
    states = jax.tree.leaves(opt_state, is_leaf=_has_hyperparams)
    for state in filter(_has_hyperparams, states):
        if "learning_rate" in state.hyperparams:
            return float(state.hyperparams["learning_rate"])
    return None


def _has_hyperparams(node) -> bool:
    return isinstance(getattr(node, "hyperparams", None), dict)
