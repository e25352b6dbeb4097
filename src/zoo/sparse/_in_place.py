"""The in-place path: a table's update lands in the table's own `jax.Ref` during the backward pass.

For an optimizer whose update of a table is a scale times its gradient (`zoo.sparse.sgd`,
`-learning_rate * grad`), the step needs neither the looked-up ids nor a gradient array:

1. Each `Embedding.weight` is a primal of `jax.vjp` and is bound to a `jax.Ref` of the table
   with `.with_refs`. The transpose of the lookup's gather is then an indexed in-place add into
   that ref: the backward pass adds into exactly the looked-up rows.
2. Each lookup passes its rows through `_scale_cotangent`, the identity forward and `scale *
   cotangent` backward, so what the gather's transpose adds is `-lr * grad`, the update itself.
   Duplicate ids add up, which is exact for a linear update.

Nothing is recorded and nothing is sorted, so a lookup may be anywhere in the loss (under
`jax.vmap`, inside `lax.scan`, `lax.cond`, `jax.checkpoint`, a nested `jit`),
and the step costs what one gather and one scatter-add of the looked-up rows cost.
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .. import _checks
from .._custom_types import PyTree
from .._nn._embedding import TableView
from . import _native
from ._lookups import split_params, swap_tables
from ._native._lookup import in_place_rows
from ._takes import reading_rows


@jax.custom_vjp
def _scale_cotangent(rows: Array, scale: Array) -> Array:
    return rows


def _scale_fwd(rows, scale):
    return rows, scale


def _scale_bwd(scale, cotangent):
    return scale.astype(cotangent.dtype) * cotangent, jnp.zeros_like(scale)


_scale_cotangent.defvjp(_scale_fwd, _scale_bwd)


class _InPlace(TableView):
    """A table whose lookups send `scale * cotangent` back to the table."""

    table: Float[Array, "rows dim"]
    scale: Float[Array, ""]

    @property
    def num_rows(self) -> int:
        return self.table.shape[0]

    def table_struct(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(self.table.shape, self.table.dtype)

    def unused_id(self) -> int:
        return 0  # read in bounds (the gather promises it); its row gets a zero update

    def lookup(self, ids: Int[Array, "*ids"], padding_idx: int | None = None) -> Array:
        del padding_idx  # zeroed by the Embedding: a zero cotangent adds nothing
        # One row per id under `vmap`: a batched gather, whose transpose XLA:CPU runs as one
        # scatter-add in place. `table[ids]` on a whole id array would transpose to JAX's
        # NumPy-style `addupdate` instead, about 2x slower there (docs/sparse.md).
        # "promise_in_bounds": `Embedding` has checked the ids (an error if any is out of
        # range), and a gather in "fill" mode, with the bounds test of every id in it and in
        # its transpose, made the whole step 2x slower on XLA:CPU.
        if _native.native_for(self.table.dtype):
            return in_place_rows(self.table, ids, self.scale)
        flat = jnp.ravel(ids)
        row = lambda i: self.table.at[i].get(mode="promise_in_bounds")  # noqa: E731
        rows = jax.vmap(row)(flat).reshape(*ids.shape, self.table.shape[1])
        return _scale_cotangent(rows, self.scale)


def check_no_refs(model: PyTree, where: str) -> None:
    """Refuses a model holding a `jax.Ref`: models stay pure, refs are made inside the step."""
    _checks.no_refs(
        model,
        where,
        "zoo makes the refs inside the step and freezes them again, and a ref in a model is "
        "treated as static by eqx.filter_jit and dropped by eqx.filter_grad.",
    )


def _check_scalar_loss(value) -> None:
    """A loss of another shape would be stepped on by its sum (the pullback is seeded with
    ones): `jax.grad`, the path of every other optimizer, refuses it too."""
    shape, dtype = jnp.shape(value), getattr(value, "dtype", None)
    if shape != () or dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            "fn must return a scalar floating loss (with has_aux=True, as the first element of "
            f"(loss, aux)); got {_checks.describe(value)}. Reduce it, e.g. "
            "jnp.mean((scores - targets) ** 2)."
        )


def value_and_grad_in_place(fn: Callable[..., Any], *, has_aux: bool = False):
    """`f(model, scale, *args, **kwargs) -> (value, grads, model)`: the loss, the dense gradients
    of every floating array that is not a table (`None` at the tables), and `model` with
    `scale * grad` added to every table's looked-up rows in place."""

    def value_grads_and_model(model, scale, *args, **kwargs):
        check_no_refs(model, "zoo.sparse")
        tables, rest = split_params(model)
        static = eqx.filter(model, eqx.is_inexact_array, inverse=True)
        reads = reading_rows(fn)

        def loss(tables, rest):
            model = eqx.combine(tables, rest, static)
            return reads(swap_tables(lambda e: _InPlace(e.weight, scale), model), *args, **kwargs)

        if has_aux:
            value, pullback, aux = jax.vjp(loss, tables, rest, has_aux=True)
            value = (value, aux)
        else:
            value, pullback = jax.vjp(loss, tables, rest)
        loss_value = value[0] if has_aux else value
        _check_scalar_loss(loss_value)
        refs = jax.tree.map(jax.new_ref, tables)
        ones = jnp.ones_like(loss_value)
        want = jax.tree.map(lambda _: jax.ad.GradValue(), rest)
        _, grads = pullback.with_refs(refs, want)(ones)
        updated = eqx.combine(jax.tree.map(jax.freeze, refs), rest, static)
        return value, grads, updated

    return value_grads_and_model
