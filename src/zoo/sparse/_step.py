"""`zoo.sparse.value_and_update`: a whole sparse step, in place wherever the optimizer allows."""

from collections.abc import Callable
from typing import Any

from .._custom_types import PyTree
from ._grad import check_loss, value_and_grad
from ._in_place import value_and_grad_in_place
from ._native import fused_in_place
from ._optimizers import SparseGradientTransformation
from ._partition import apply_updates


def value_and_update(
    fn: Callable[..., Any], optimizer: SparseGradientTransformation, *, has_aux: bool = False
) -> Callable[..., tuple[Any, PyTree, PyTree]]:
    """The loss, and `model` and `opt_state` after one step of `optimizer`: the step a training
    loop needs, taken by the fastest exact path.

    - With `zoo.sparse.sgd` on the tables (alone or in `zoo.sparse.partition`), each table is
      bound to a `jax.Ref` and the backward pass adds `-learning_rate * grad` into its
      looked-up rows in place: one gather and one scatter-add per lookup, nothing recorded or
      sorted.
    - With an optimizer that keeps per-row state (`rowwise_adagrad`, `adagrad`, `lazy_adam`),
      the step is `value_and_grad`, `optimizer.update` and `apply_updates`: the looked-up ids
      are collected and coalesced, and only those rows of the table and of the state change.

    Either way a table may be looked up anywhere in `fn`: directly, under `jax.vmap`, inside
    `jax.lax.scan`, `jax.lax.cond`, `jax.checkpoint` or a nested `jax.jit`, any number of
    times.

    Both cost `O(ids looked up)` per step. Every floating array that is not an
    `Embedding.weight` gets its ordinary gradient and the optimizer's dense update.

    **Arguments:**

    - `fn`: `fn(model, *args, **kwargs)` returning a scalar loss (or `(loss, aux)` with
        `has_aux=True`).
    - `optimizer`: a `zoo.sparse` optimizer, usually `zoo.sparse.partition(dense=...,
        embeddings=...)`.
    - `has_aux`: as in `jax.value_and_grad`.

    **Returns:**

    A function `(model, opt_state, *args, **kwargs) -> (value, model, opt_state)`. Call it
    inside `jax.jit` with the model and state donated, so that the tables and the optimizer's
    per-row state are updated in place.

    !!! example

        ```python
        model = zoo.MatrixFactorization(num_users=50, num_items=40, dim=8, key=jax.random.key(0))
        batch = {"user": jnp.array([0, 1, 1]), "item": jnp.array([3, 3, 7]),
                 "rating": jnp.array([4.0, 3.0, 5.0])}

        def loss_fn(model, batch):
            scores = jax.vmap(model)(batch["user"], batch["item"])
            return jnp.mean((scores - batch["rating"]) ** 2)

        opt = zoo.sparse.partition(dense=optax.adam(1e-3), embeddings=zoo.sparse.sgd(0.1))

        @eqx.filter_jit(donate="all")
        def step(model, opt_state, batch):
            return zoo.sparse.value_and_update(loss_fn, opt)(model, opt_state, batch)

        loss, model, opt_state = step(model, opt.init(model), batch)
        ```
    """
    check_loss(fn)
    if not isinstance(optimizer, SparseGradientTransformation):
        raise TypeError(
            "zoo.sparse.value_and_update takes a zoo.sparse optimizer; got "
            f"{type(optimizer).__name__}. For example zoo.sparse.value_and_update(loss_fn, "
            "zoo.sparse.partition(dense=optax.adam(1e-3), embeddings=zoo.sparse.sgd(0.1)))."
        )

    def step(model, opt_state, *args, **kwargs):
        if optimizer.in_place_scale is None:
            value, grads = value_and_grad(fn, has_aux=has_aux)(model, *args, **kwargs)
            if optimizer.apply_in_place is not None and fused_in_place(model):
                model, opt_state = optimizer.apply_in_place(grads, opt_state, model)
                return value, model, opt_state
        else:
            scale = optimizer.in_place_scale(opt_state)
            in_place = value_and_grad_in_place(fn, has_aux=has_aux)
            value, grads, model = in_place(model, scale, *args, **kwargs)
        updates, opt_state = optimizer.update(grads, opt_state, model)
        return value, apply_updates(model, updates), opt_state

    return step
