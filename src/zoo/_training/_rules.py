"""How a step turns a loss into an update: the dense optax rule, or the sparse-embedding rule."""

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import optax

from .. import sparse


class UpdateRule(NamedTuple):
    """The three functions a training step needs from its optimizer family.

    - `value_and_grad(loss_fn)(model, batch, key) -> (loss, grads)`
    - `params(model)`: what the optimizer's `update(grads, state, params)` receives.
    - `apply_updates(model, updates) -> model`
    - `grad_norm(grads) -> scalar`: the global norm of the gradients.
    """

    value_and_grad: Callable[[Callable], Callable]
    params: Callable[[eqx.Module], Any]
    apply_updates: Callable[[eqx.Module, Any], eqx.Module]
    grad_norm: Callable[[Any], Any]


def global_norm(grads) -> Any:
    """The norm of all floating arrays of `grads` (a `SparseRows` counts by its values)."""
    return optax.tree.norm(eqx.filter(grads, eqx.is_inexact_array))


DENSE = UpdateRule(
    value_and_grad=eqx.filter_value_and_grad,
    # The optimizer sees what is differentiated: floating arrays. Integer arrays in a model
    # (lookup tables, counts) get no gradient, and optax would turn their state leaves into None
    # after the first update, changing the state's structure between steps.
    params=lambda model: eqx.filter(model, eqx.is_inexact_array),
    apply_updates=eqx.apply_updates,
    grad_norm=global_norm,
)


# Sparse-embedding optimizers see the whole model and take gradients whose tables are
# `SparseRows` (only the looked-up rows), so a step costs O(batch) rather than O(table).
SPARSE = UpdateRule(
    value_and_grad=sparse.value_and_grad,
    params=lambda model: model,
    apply_updates=sparse.apply_updates,
    grad_norm=global_norm,
)


def rule_for(optimizer) -> UpdateRule:
    """The update rule matching `optimizer`: the sparse one for `zoo.sparse` optimizers."""
    return SPARSE if isinstance(optimizer, sparse.SparseGradientTransformation) else DENSE
