"""Losses for `zoo.train`: per-example functions and the name registry.

`zoo.train(..., loss="cross_entropy")` looks names up in `zoo.losses.LOSSES`; any callable
`loss(model, batch, key) -> scalar` works too, and `supervised` builds one from a per-example
function of (prediction, target).
"""

from ._losses import (
    LOSSES as LOSSES,
    bce as bce,
    cross_entropy as cross_entropy,
    mse as mse,
    register_loss as register_loss,
    supervised as supervised,
)
