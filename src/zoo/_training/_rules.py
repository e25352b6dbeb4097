"""How a step turns a loss into an update: the dense optax rule, or a sparse-embedding rule."""

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from .. import sparse
from ..sparse import _in_place as sparse_in_place, _native as sparse_native


class UpdateRule(NamedTuple):
    """The functions a training step needs from its optimizer family.

    - `value_and_grad(loss_fn)(model, batch, key) -> (loss, grads)`
    - `params(model)`: what the optimizer's `update(grads, state, params)` receives.
    - `apply_updates(model, updates) -> model`
    - `grad_norm(grads) -> scalar`: the global norm of the gradients.
    - `in_place`: the tables' update is added into them during the backward pass (see
        `gradients`), for an optimizer with an `in_place_scale` (`zoo.sparse.sgd`).
    """

    value_and_grad: Callable[[Callable], Callable]
    params: Callable[[eqx.Module], Any]
    apply_updates: Callable[[eqx.Module, Any], eqx.Module]
    grad_norm: Callable[[Any], Any]
    in_place: bool = False

    def gradients(self, value_and_grad: Callable, loss_fn: Callable, optimizer) -> Callable:
        """`f(model, opt_state, batch, key) -> (loss, grads, model)`.

        `value_and_grad` is `self.value_and_grad(loss_fn)`, possibly wrapped (loss scaling,
        accumulation). With `in_place`, the returned model has the tables' update already
        added and `grads` holds the other parameters' gradients; otherwise the model is the
        one given.
        """
        if self.in_place:

            def in_place(model, opt_state, batch, key):
                scale = optimizer.in_place_scale(opt_state)
                return sparse_in_place.value_and_grad_in_place(loss_fn)(model, scale, batch, key)

            return in_place

        def unchanged(model, opt_state, batch, key):
            del opt_state
            loss, grads = value_and_grad(model, batch, key)
            return loss, grads, model

        return unchanged


def global_norm(grads) -> Any:
    """The norm of all floating arrays of `grads` (a `SparseRows` counts by its values).

    Every step computes it (for `history["train"]["grad_norm"]` and to catch a non-finite
    gradient). On one CPU device zoo's native kernel reads each float32 gradient once; XLA's
    square-then-reduce took a second pass that made a small model's step about 12% slower.
    """
    leaves = jax.tree.leaves(eqx.filter(grads, eqx.is_inexact_array))
    if leaves and all(leaf.dtype == jnp.float32 for leaf in leaves) and sparse_native.native():
        return jnp.sqrt(sum(sparse_native.sum_squares(leaf) for leaf in leaves))
    return optax.tree.norm(leaves)


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

# Tables whose optimizer is linear in the gradient (`zoo.sparse.sgd`) receive their update in
# their own `jax.Ref` during the backward pass. Their gradients are never materialised, so the
# recorded gradient norm covers the other parameters.
IN_PLACE = SPARSE._replace(in_place=True)


def fused_update(optimizer, rule: UpdateRule, model) -> bool:
    """Whether `optimizer` updates the tables and its state in one native pass (row-wise Adagrad
    and lazy Adam on CPU), instead of `update` followed by `apply_updates`."""
    fused = getattr(optimizer, "apply_in_place", None)
    return rule is SPARSE and fused is not None and sparse_native.fused_in_place(model)


def rule_for(optimizer, *, in_place: bool = True) -> UpdateRule:
    """The update rule matching `optimizer`: a sparse one for `zoo.sparse` optimizers, in place
    where the optimizer allows it and the run allows it (`in_place`: no non-finite step to undo,
    no mesh to route the tables' ids over)."""
    if not isinstance(optimizer, sparse.SparseGradientTransformation):
        return DENSE
    if optimizer.in_place_scale is None or not in_place:
        return SPARSE
    return IN_PLACE
