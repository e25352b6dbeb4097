"""Gradient norms and clipping that see only the values of `SparseRows`, never their ids."""

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float

from .. import _checks
from .._custom_types import PyTree, RealLike
from ._optimizers import SparseGradientTransformation
from ._rows import SparseRows, is_sparse_rows


def global_norm(grads: PyTree) -> Float[Array, ""]:
    """The L2 norm of all gradients of a model: dense arrays and the values of `SparseRows`.

    `optax.global_norm` would count the integer row ids of a `SparseRows` as numbers; this
    leaves them out. Coalesced rows hold each row once (the sentinels' values are zero), so the
    result equals the norm of the dense gradient.

    **Arguments:**

    - `grads`: gradients from `zoo.sparse.value_and_grad` (or any pytree of arrays and
        `SparseRows`).

    **Returns:**

    A scalar, the square root of the sum of squares of every floating value.

    !!! example

        ```python
        emb = zoo.Embedding(100, 4, key=jax.random.key(0))
        _, grads = zoo.sparse.value_and_grad(lambda e, i: jnp.sum(e(i)))(emb, jnp.array([3, 3]))
        zoo.sparse.global_norm(grads)  # 4.0: row 3's gradient is [2, 2, 2, 2]
        ```
    """
    return optax.tree.norm(eqx.filter(grads, eqx.is_inexact_array))


class ClipByGlobalNormState(NamedTuple):
    """State of `zoo.sparse.clip_by_global_norm`: none."""


def _scaled(tree: PyTree, scale: Float[Array, ""]) -> PyTree:
    def scale_leaf(x):
        if is_sparse_rows(x):
            return SparseRows(x.ids, (scale * x.values).astype(x.values.dtype), x.num_rows)
        return (scale * x).astype(x.dtype)

    return jax.tree.map(scale_leaf, tree, is_leaf=is_sparse_rows)


def clip_by_global_norm(max_norm: RealLike) -> SparseGradientTransformation:
    """Scales gradients (dense arrays and `SparseRows` alike) so that their global norm, by
    `zoo.sparse.global_norm`, is at most `max_norm`: `optax.clip_by_global_norm` for sparse
    gradients.

    Chain it before the optimizer with `zoo.sparse.chain`: in front of `zoo.sparse.partition`
    it clips the whole model's gradient (tables and dense parameters together); as the
    `embeddings` side of a partition it clips the tables' gradients by their own norm. (In
    `dense`, `optax.clip_by_global_norm` clips the dense parameters by theirs.)

    **Arguments:**

    - `max_norm`: the largest norm let through, a positive float.

    **Returns:**

    A `SparseGradientTransformation` with an empty state.

    !!! example

        ```python
        opt = zoo.sparse.chain(
            zoo.sparse.clip_by_global_norm(1.0),
            zoo.sparse.partition(
                dense=optax.adam(1e-3), embeddings=zoo.sparse.rowwise_adagrad(0.05)
            ),
        )
        ```
    """
    max_norm = _checks.positive_real(
        "max_norm", max_norm, example="zoo.sparse.clip_by_global_norm(1.0)"
    )

    def init(params: PyTree) -> ClipByGlobalNormState:
        del params
        return ClipByGlobalNormState()

    def update(grads: PyTree, state: ClipByGlobalNormState, params: PyTree = None):
        del params
        norm = global_norm(grads)
        # As optax: a norm of 0 leaves the gradients alone.
        scale = jnp.where(norm > max_norm, max_norm / jnp.where(norm > 0, norm, 1.0), 1.0)
        return _scaled(grads, scale), state

    return SparseGradientTransformation(init, update)


def chain(*transformations: SparseGradientTransformation) -> SparseGradientTransformation:
    """Applies `zoo.sparse` transformations one after another: `optax.chain` for sparse
    gradients. Each gets the previous one's updates as its gradients.

    **Arguments:**

    - `*transformations`: `SparseGradientTransformation`s, e.g. `zoo.sparse.clip_by_global_norm`
        and then `zoo.sparse.partition(...)`.

    **Returns:**

    A `SparseGradientTransformation` whose state is the tuple of their states. It is taken in
    place (`zoo.sparse.sgd`'s update added during the backward pass) only when it is a single
    transformation that is.
    """
    for index, transformation in enumerate(transformations):
        if not isinstance(transformation, SparseGradientTransformation):
            raise TypeError(
                f"transformations[{index}] of zoo.sparse.chain must be a zoo.sparse "
                f"transformation; got {_checks.describe(transformation)}. Put optax "
                "transformations inside zoo.sparse.partition(dense=optax.chain(...), ...)."
            )
    if not transformations:
        raise ValueError("zoo.sparse.chain needs at least one transformation.")

    def init(params: PyTree) -> tuple:
        return tuple(t.init(params) for t in transformations)

    def update(grads: PyTree, state: tuple, params: PyTree = None):
        if not isinstance(state, tuple) or len(state) != len(transformations):
            raise TypeError(
                f"opt_state of zoo.sparse.chain must be the tuple of {len(transformations)} "
                "states made by its init; got "
                f"{_checks.describe(state)}. For example: opt_state = opt.init(model)."
            )
        new_state = []
        for transformation, inner in zip(transformations, state, strict=True):
            grads, inner = transformation.update(grads, inner, params)
            new_state.append(inner)
        return grads, tuple(new_state)

    in_place_scale = None
    if len(transformations) == 1 and transformations[0].in_place_scale is not None:
        only = transformations[0].in_place_scale
        in_place_scale = lambda state: only(state[0])  # noqa: E731
    return SparseGradientTransformation(init, update, in_place_scale)
