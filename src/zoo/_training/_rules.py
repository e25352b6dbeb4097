"""How a step turns a loss into an update: the dense optax rule, or a sparse-embedding rule."""

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import optax

from .. import sparse
from ..sparse import _in_place as sparse_in_place


class UpdateRule(NamedTuple):
    """The functions a training step needs from its optimizer family.

    - `gradients(loss_fn, optimizer)(model, opt_state, batch, key) -> (loss, grads, model)`:
        the returned model is `model`, except where the rule applies part of the update during
        the backward pass (`IN_PLACE`); `grads` holds what is left to update.
    - `params(model)`: what the optimizer's `update(grads, state, params)` receives.
    - `apply_updates(model, updates) -> model`
    - `grad_norm(grads) -> scalar`: the global norm of the gradients.
    """

    gradients: Callable[[Callable, Any], Callable]
    params: Callable[[eqx.Module], Any]
    apply_updates: Callable[[eqx.Module, Any], eqx.Module]
    grad_norm: Callable[[Any], Any]


def global_norm(grads) -> Any:
    """The norm of all floating arrays of `grads` (a `SparseRows` counts by its values)."""
    return optax.tree.norm(eqx.filter(grads, eqx.is_inexact_array))


def model_unchanged(value_and_grad: Callable[[Callable], Callable]) -> Callable:
    """`UpdateRule.gradients` from a `value_and_grad(loss_fn)(model, batch, key)`."""

    def gradients(loss_fn, optimizer):
        del optimizer

        def run(model, opt_state, batch, key):
            del opt_state
            loss, grads = value_and_grad(loss_fn)(model, batch, key)
            return loss, grads, model

        return run

    return gradients


def in_place_gradients(loss_fn, optimizer):
    """The tables' update added in place by the backward pass; gradients of the rest."""

    def run(model, opt_state, batch, key):
        scale = optimizer.in_place_scale(opt_state)
        return sparse_in_place.value_and_grad_in_place(loss_fn)(model, scale, batch, key)

    return run


DENSE = UpdateRule(
    gradients=model_unchanged(eqx.filter_value_and_grad),
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
    gradients=model_unchanged(sparse.value_and_grad),
    params=lambda model: model,
    apply_updates=sparse.apply_updates,
    grad_norm=global_norm,
)

# Tables whose optimizer is linear in the gradient (`zoo.sparse.sgd`) receive their update in
# their own `jax.Ref` during the backward pass. Their gradients are never materialised, so the
# recorded gradient norm covers the other parameters.
IN_PLACE = SPARSE._replace(gradients=in_place_gradients)


def rule_for(optimizer, *, in_place: bool = True) -> UpdateRule:
    """The update rule matching `optimizer`: a sparse one for `zoo.sparse` optimizers, in place
    where the optimizer allows it and the run allows it (`in_place`: no non-finite step to undo,
    no mesh to route the tables' ids over)."""
    if not isinstance(optimizer, sparse.SparseGradientTransformation):
        return DENSE
    if optimizer.in_place_scale is None or not in_place:
        return SPARSE
    return IN_PLACE
