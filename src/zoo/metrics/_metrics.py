"""Metrics: per-example functions of (prediction, target), and the registry `zoo.evaluate` reads.

Each returns one value per example so that averages over a dataset are exact whatever the batch
size, the last partial batch included.
"""

import re
from collections.abc import Callable, Sequence

import jax.numpy as jnp
from jaxtyping import Array, Float

from ..losses._losses import bce, cross_entropy, mse

Metric = Callable[[Array, Array], Array]


def accuracy(predictions: Float[Array, "batch outputs"], targets: Array) -> Float[Array, " batch"]:
    """1.0 where the prediction is right: argmax for several outputs, `logit > 0` for one.

    NaN for an example whose predictions are not all finite: an argmax of NaN is class 0, which
    would count as right on class-0 targets.
    """
    if predictions.shape[-1] == 1:
        guesses = (predictions[:, 0] > 0).astype(targets.dtype)
        targets = targets.reshape(guesses.shape)
    else:
        guesses = jnp.argmax(predictions, axis=-1).astype(targets.dtype)
    right = (guesses == targets).astype(predictions.dtype)
    finite = jnp.all(jnp.isfinite(predictions.reshape(predictions.shape[0], -1)), axis=1)
    return jnp.where(finite, right, jnp.nan)


def mae(predictions: Float[Array, " batch ..."], targets: Array) -> Float[Array, " batch"]:
    """Absolute error, averaged over an example's outputs."""
    errors = jnp.abs(predictions - targets.reshape(predictions.shape).astype(predictions.dtype))
    return jnp.mean(errors.reshape(predictions.shape[0], -1), axis=-1)


METRICS: dict[str, Metric] = {
    "accuracy": accuracy,
    "cross_entropy": cross_entropy,
    "mse": mse,
    "mae": mae,
    "bce": bce,
}


# Whether more is better, for each figure zoo records: its metrics and losses by name, and the
# ranking figures of `zoo.recsys` by their pattern. A figure not here has no known direction:
# whoever monitors it says which way is better (`zoo.EarlyStopping(..., mode="max")`).
DIRECTIONS: dict[str, str] = {
    "accuracy": "max",
    "cross_entropy": "min",
    "mse": "min",
    "mae": "min",
    "bce": "min",
    "loss": "min",
    "auc": "max",
    "mrr": "max",
}
_RANKING = re.compile(r"(hr|recall|ndcg|precision)@[0-9]+")


def direction(name: str) -> str | None:
    """`"max"` or `"min"` for a figure zoo defines (`"accuracy"`, `"loss"`, `"ndcg@10"`),
    `None` for any other name."""
    if name in DIRECTIONS:
        return DIRECTIONS[name]
    return "max" if _RANKING.fullmatch(name) else None


def resolve_metrics(metrics: Sequence[str | Metric] | dict[str, Metric]) -> dict[str, Metric]:
    """Names each metric: registry names map to their function, callables keep their `__name__`."""
    if isinstance(metrics, dict):
        return dict(metrics)
    if isinstance(metrics, str):
        metrics = (metrics,)
    resolved = {}
    for metric in metrics:
        if callable(metric):
            resolved[getattr(metric, "__name__", f"metric_{len(resolved)}")] = metric
        elif metric in METRICS:
            resolved[metric] = METRICS[metric]
        else:
            known = ", ".join(repr(name) for name in METRICS)
            raise ValueError(
                f"metrics must name known metrics ({known}) or be callables "
                f"metric(predictions, targets) -> per-example values; got {metric!r}."
            )
    return resolved
