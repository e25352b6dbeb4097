"""`zoo.sparse.value_and_grad`: the gradient of each embedding table as its looked-up rows.

Two passes over the loss, both inside the caller's trace:

1. *Record* (`_lookups.looked_up_ids`): the ids of every lookup of every table, wherever in the
   loss it happens (directly, under `jax.vmap`, inside `lax.scan`, `lax.cond`,
   `jax.checkpoint` or a nested `jax.jit`), written into a `jax.Ref` log per table.
2. *Differentiate.* The ids of each table are coalesced (sorted, each repeat replaced by an
   out-of-range sentinel) and the table is swapped for a `_Compact` view: those rows, gathered
   once, plus the ids. A lookup finds its row by binary search (the first of equal sorted ids),
   so it works wherever the loss calls the table. Differentiating the rows instead of the table
   gives the gradient of exactly the looked-up rows, duplicates summed, with no table-sized
   array.

`zoo.sparse.sgd` needs neither pass: see `_in_place.py`, where the gradient of the looked-up
rows is added into the table's own `jax.Ref` by the backward pass.
"""

import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .. import _checks
from .._nn._embedding import Embedding, TableView
from . import _native
from ._in_place import check_no_refs
from ._lookups import looked_up_ids, swap_tables, tables
from ._native._lookup import in_place_rows
from ._rows import SparseRows
from ._takes import reading_rows


class _Compact(TableView):
    rows: Float[Array, "n dim"]
    ids: Int[Array, " n"]  # the ids of `rows`, as in `SparseRows`: repeats are sentinels
    sorted_ids: Int[Array, " n"]  # every id looked up, sorted, repeats kept
    table_rows: int = eqx.field(static=True)

    @property
    def num_rows(self) -> int:
        return self.table_rows

    def table_struct(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct((self.table_rows, self.rows.shape[1]), self.rows.dtype)

    def lookup(self, ids: Int[Array, "*ids"], padding_idx: int | None = None) -> Array:
        # Every id looked up is in `sorted_ids` (recorded by the first pass), and the first of
        # its copies is the slot that holds its row. Padding ids looked up by the Embedding
        # (recorded as the sentinel) land on some slot and are zeroed by the Embedding, so they
        # add no gradient; so do the masked-out ids of a `mode="fill"` read.
        del padding_idx
        if self.rows.shape[0] == 0:  # nothing looked up: an empty batch
            return jnp.zeros((*ids.shape, self.rows.shape[1]), self.rows.dtype)
        slot = jnp.searchsorted(self.sorted_ids, ids.astype(self.sorted_ids.dtype))
        slot = jnp.minimum(slot, self.rows.shape[0] - 1)
        if _native.native_for(self.rows.dtype):
            # The native gather, and its transpose the native scatter-add (scale one: exact).
            return in_place_rows(self.rows, slot, jnp.ones((), jnp.float32))
        return self.rows[slot]


def _is_compact(x) -> bool:
    return isinstance(x, _Compact)


def _coalesce(embedding: Embedding, ids: Int[Array, " n"]) -> tuple[Array, Array]:
    """`(ids, sorted_ids)`: the ids of all lookups, sorted (the Embedding's lookups of its
    padding id were recorded as the sentinel `num_embeddings`); in `ids`, every repeat of an id
    is the sentinel too.

    A sort and a comparison, instead of `jnp.unique(..., size=n)`, which costs 3x as much (a
    lexicographic sort and a compaction) for nothing the optimizers need: they drop sentinels.
    """
    sentinel = embedding.num_embeddings
    if ids.shape[0] == 0:  # a table the loss never looks up
        return ids, ids
    native = _native.native() and ids.dtype == jnp.int32
    sorted_ids = _native.sort_ids(ids) if native else jnp.sort(ids)
    repeat = jnp.concatenate([jnp.zeros((1,), bool), sorted_ids[1:] == sorted_ids[:-1]])
    return jnp.where(repeat, sentinel, sorted_ids), sorted_ids


RowGather = Callable[[Embedding, Int[Array, " n"]], Float[Array, "n dim"]]
"""`gather(embedding, ids) -> rows`: the rows of coalesced ids (zeros at the sentinels)."""


def local_rows(embedding: Embedding, ids: Int[Array, " n"]) -> Float[Array, "n dim"]:
    """The rows of `ids` from the table in this process's memory."""
    if _native.native():
        return _native.gather_rows(embedding.weight, ids)
    return embedding.weight.at[ids].get(mode="fill", fill_value=0)


def coalesced_ids(fn: Callable[..., Any], model, *args, **kwargs) -> list[tuple[Embedding, Array]]:
    """`(embedding, ids)` for each table of `model`: the ids `fn(model, *args, **kwargs)` looks
    up, coalesced as `value_and_grad` coalesces them."""
    recorded = looked_up_ids(reading_rows(fn), model, *args, **kwargs)
    return [(e, _coalesce(e, ids)[0]) for e, ids in zip(tables(model), recorded, strict=True)]


def _compact_model(gather: "RowGather", fn: Callable[..., Any], model, *args, **kwargs):
    """`model` with each table swapped for a `_Compact` view of the rows `fn` looks up."""
    recorded = iter(looked_up_ids(fn, model, *args, **kwargs))

    def view(embedding):
        ids, sorted_ids = _coalesce(embedding, next(recorded))
        return _Compact(gather(embedding, ids), ids, sorted_ids, embedding.num_embeddings)

    return swap_tables(view, model)


def _as_sparse_rows(grad, compact):
    if _is_compact(grad):
        return SparseRows(compact.ids, grad.rows, compact.table_rows)
    return grad


def value_and_grad(fn: Callable[..., Any], *, has_aux: bool = False) -> Callable[..., Any]:
    """Like `eqx.filter_value_and_grad`, with each embedding table's gradient as `SparseRows`.

    **Arguments:**

    - `fn`: `fn(model, *args, **kwargs)` returning a scalar loss (or `(loss, aux)` with
        `has_aux=True`). `model` is any pytree containing `zoo.Embedding` modules anywhere, each
        of which may be looked up any number of times, directly or under `jax.vmap`.
    - `has_aux`: as in `jax.value_and_grad`.

    **Returns:**

    A function `(model, *args, **kwargs) -> (value, grads)`. `grads` has the structure of
    `eqx.filter(model, eqx.is_inexact_array)`: every `Embedding.weight` holds a coalesced
    `SparseRows` (summed over duplicate ids and over all lookups of that table, padding ids
    left out) and every other floating array its ordinary dense gradient.

    Tables may be looked up anywhere in `fn`: directly, under `jax.vmap`, inside `jax.lax.scan`,
    `jax.lax.cond`, `jax.checkpoint` or a nested `jax.jit`. (Inside `jax.lax.while_loop`, which
    JAX cannot differentiate in reverse mode, a lookup raises a `ValueError`.)

    The work per step is `O(ids looked up)`: no array of the table's size is made. Jit the step
    so that XLA drops the parts of the recording pass that only the ids do not need.

    !!! example

        ```{.python notest}
        # a fragment: model and batch are yours (docs/sparse.md has the whole example)
        def loss_fn(model, batch):
            scores = jax.vmap(model)(batch["user"], batch["item"])
            return jnp.mean((scores - batch["rating"]) ** 2)

        loss, grads = zoo.sparse.value_and_grad(loss_fn)(model, batch)
        ```

    !!! warning

        Inside `fn` a table is read by rows: by calling its `Embedding`, or as
        `weight[ids]`, `weight.at[ids].get(...)`, `weight.take(ids, axis=0)` or
        `jnp.take(weight, ids, axis=0)`. Its `weight` is a stand-in there, and a read of the
        whole table (weight tying such as `h @ embedding.weight.T`, weight decay on the whole
        table, `jnp.take(weight, ids)` without `axis=0`) raises a `TypeError` naming the
        table and the ways out (docs/sparse.md, "Reading a table inside the loss").
    """

    return value_and_grad_with(fn, local_rows, has_aux=has_aux)


def check_loss(fn) -> None:
    """`fn` must be a loss function; a model or a number there fails only at the first step."""
    if not callable(fn):
        raise TypeError(
            f"fn must be a loss function fn(model, *args) -> scalar; got {_checks.describe(fn)}. "
            "For example: zoo.sparse.value_and_grad(lambda model, ids: jnp.sum(model(ids)))"
        )


def value_and_grad_with(fn: Callable[..., Any], gather: RowGather, *, has_aux: bool = False):
    """`value_and_grad`, with the looked-up rows of each table fetched by `gather`.

    `zoo.distributed` passes a `gather` that fetches rows from the devices that hold them.
    """
    check_loss(fn)

    @functools.wraps(fn)
    def value_and_grad_fn(model, *args, **kwargs):
        check_no_refs(model, "zoo.sparse.value_and_grad")
        reads = reading_rows(fn)  # jnp.take(weight, ids, axis=0), in all three passes
        compact = _compact_model(gather, reads, model, *args, **kwargs)
        diff, static = eqx.partition(compact, eqx.is_inexact_array)

        def loss(diff):
            return reads(eqx.combine(diff, static), *args, **kwargs)

        value, grads = jax.value_and_grad(loss, has_aux=has_aux)(diff)
        is_leaf = lambda x: x is None or _is_compact(x)  # noqa: E731
        return value, jax.tree.map(_as_sparse_rows, grads, compact, is_leaf=is_leaf)

    return value_and_grad_fn
