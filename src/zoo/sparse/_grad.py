"""`zoo.sparse.value_and_grad`: the gradient of each embedding table as its looked-up rows.

Two passes over the loss, both inside the caller's trace:

1. *Record.* Each `Embedding.weight` is swapped for a `_Recorder` that notes the ids of every
   lookup. Only the ids are used from this pass, so under `jax.jit` XLA removes the rest of it.
2. *Differentiate.* The ids of each table are coalesced (sorted, each repeat replaced by an
   out-of-range sentinel) and the table is swapped for a `_Compact` view: those rows, gathered
   once, plus the ids. A lookup finds its row by binary search (the first of equal sorted ids),
   so it works wherever the loss calls the table, under `jax.vmap` too. Differentiating the
   rows instead of the table gives the gradient of exactly the looked-up rows, duplicates
   summed, with no table-sized array.

Lookups made under `jax.vmap` are recorded with their batch axes by a `custom_vmap` rule that
lifts the ids out of each `vmap` in turn (`_lift`).
"""

import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap
from jaxtyping import Array, Float, Int

from .._embedding import Embedding, TableView
from ._rows import SparseRows


class _Tape:
    """The ids of every lookup of one table, as seen by the trace that runs the loss."""

    def __init__(self):
        self.ids: list[Array] = []

    def record(self, ids: Int[Array, "..."]) -> None:
        self.ids.append(ids)
        _lift(self.ids, len(self.ids) - 1, ids)


def _lift(entries: list[Array], index: int, ids: Int[Array, "..."]) -> None:
    """Under `jax.vmap`, replace `entries[index]` by the ids with their batch axis, recursively.

    Outside any `vmap` this does nothing (the `custom_vmap` call has no effect and no used
    output). Inside one, the rule runs at trace time in the enclosing trace with the batched ids,
    so the tape ends up holding ids of the trace that called `value_and_grad`.
    """

    @custom_vmap
    def mark(ids):
        return ids

    @mark.def_vmap
    def rule(axis_size, in_batched, ids):
        del axis_size
        entries[index] = ids
        _lift(entries, index, ids)
        return ids, in_batched[0]

    mark(ids)


class _Recorder(TableView):
    table: Float[Array, "rows dim"]
    tape: _Tape = eqx.field(static=True)

    def lookup(self, ids: Int[Array, "*ids"]) -> Float[Array, "*ids dim"]:
        self.tape.record(ids)
        return self.table.at[ids].get(mode="fill", wrap_negative_indices=False)


class _Compact(TableView):
    rows: Float[Array, "n dim"]
    ids: Int[Array, " n"]  # the ids of `rows`, as in `SparseRows`: repeats are sentinels
    sorted_ids: Int[Array, " n"]  # every id looked up, sorted, repeats kept
    num_rows: int = eqx.field(static=True)

    def lookup(self, ids: Int[Array, "*ids"]) -> Float[Array, "*ids dim"]:
        # Every non-padding id looked up is in `sorted_ids` (recorded by the first pass), and the
        # first of its copies is the slot that holds its row. Padding ids land on some slot and
        # are zeroed by the Embedding, so they add no gradient.
        slot = jnp.searchsorted(self.sorted_ids, ids.astype(self.sorted_ids.dtype))
        return self.rows[jnp.minimum(slot, self.rows.shape[0] - 1)]


def _is_embedding(x) -> bool:
    return isinstance(x, Embedding)


def _is_compact(x) -> bool:
    return isinstance(x, _Compact)


def _swap_tables(view: Callable[..., TableView], model, *others):
    """`model` with each `Embedding.weight` replaced by `view(embedding, *matching_others)`."""

    def swap(node, *rest):
        if not _is_embedding(node):
            return node
        return eqx.tree_at(lambda e: e.weight, node, view(node, *rest))

    return jax.tree.map(swap, model, *others, is_leaf=_is_embedding)


def _coalesce(embedding: Embedding, recorded: list[Array]) -> tuple[Array, Array]:
    """`(ids, sorted_ids)`: the non-padding ids of all lookups, sorted, with padding ids as the
    sentinel `num_embeddings`; in `ids`, every repeat of an id is the sentinel too.

    A sort and a comparison, instead of `jnp.unique(..., size=n)`, which costs 3x as much (a
    lexicographic sort and a compaction) for nothing the optimizers need: they drop sentinels.
    """
    sentinel = embedding.num_embeddings
    if not recorded:
        empty = jnp.zeros((0,), jnp.int32)
        return empty, empty
    try:
        ids = jnp.concatenate([jnp.ravel(i).astype(jnp.int32) for i in recorded])
    except jax.errors.UnexpectedTracerError as e:
        raise ValueError(
            "zoo.sparse.value_and_grad sees embedding lookups made in the loss directly or under "
            "jax.vmap; this one was made inside another transformation (jax.lax.scan, "
            "jax.lax.cond, a nested jax.jit or jax.checkpoint, ...). Look the ids up before it, "
            "e.g. `rows = jax.vmap(embedding)(ids)` outside the scan, or use the dense path."
        ) from e
    if embedding.padding_idx is not None:
        ids = jnp.where(ids == embedding.padding_idx, sentinel, ids)
    sorted_ids = jnp.sort(ids)
    repeat = jnp.concatenate([jnp.zeros((1,), bool), sorted_ids[1:] == sorted_ids[:-1]])
    return jnp.where(repeat, sentinel, sorted_ids), sorted_ids


RowGather = Callable[[Embedding, Int[Array, " n"]], Float[Array, "n dim"]]
"""`gather(embedding, ids) -> rows`: the rows of coalesced ids (zeros at the sentinels)."""


def local_rows(embedding: Embedding, ids: Int[Array, " n"]) -> Float[Array, "n dim"]:
    """The rows of `ids` from the table in this process's memory."""
    return embedding.weight.at[ids].get(mode="fill", fill_value=0)


def _compact_view(gather: RowGather, embedding: Embedding, recording: Embedding) -> _Compact:
    ids, sorted_ids = _coalesce(embedding, recording.weight.tape.ids)
    return _Compact(gather(embedding, ids), ids, sorted_ids, embedding.num_embeddings)


def _record(fn: Callable[..., Any], model, *args, **kwargs):
    """`model` with each table a `_Recorder` holding the ids that `fn(model, ...)` looks up."""
    recording = _swap_tables(lambda e: _Recorder(e.weight, _Tape()), model)
    fn(recording, *args, **kwargs)
    return recording


def coalesced_ids(fn: Callable[..., Any], model, *args, **kwargs) -> list[tuple[Embedding, Array]]:
    """`(embedding, ids)` for each table of `model`: the ids `fn(model, *args, **kwargs)` looks
    up, coalesced as `value_and_grad` coalesces them."""
    recording = _record(fn, model, *args, **kwargs)
    pairs = zip(_tables(model), _tables(recording), strict=True)
    return [(table, _coalesce(table, recorded.weight.tape.ids)[0]) for table, recorded in pairs]


def _tables(model) -> list[Embedding]:
    return [x for x in jax.tree.leaves(model, is_leaf=_is_embedding) if _is_embedding(x)]


def _as_sparse_rows(grad, compact):
    if _is_compact(grad):
        return SparseRows(compact.ids, grad.rows, compact.num_rows)
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

        Inside `fn` a table is only readable by calling its `Embedding`: its `weight` is a
        stand-in there, so weight tying (`h @ embedding.weight.T`) or weight decay on the table
        needs the dense path. Lookups inside `jax.lax.scan`, `cond`, `while_loop`, a nested `jit` or
        `jax.checkpoint` within `fn` raise a `ValueError`: look the ids up outside them.
    """

    return value_and_grad_with(fn, local_rows, has_aux=has_aux)


def value_and_grad_with(fn: Callable[..., Any], gather: RowGather, *, has_aux: bool = False):
    """`value_and_grad`, with the looked-up rows of each table fetched by `gather`.

    `zoo.distributed` passes a `gather` that fetches rows from the devices that hold them.
    """

    @functools.wraps(fn)
    def value_and_grad_fn(model, *args, **kwargs):
        recording = _record(fn, model, *args, **kwargs)
        compact = _swap_tables(functools.partial(_compact_view, gather), model, recording)
        diff, static = eqx.partition(compact, eqx.is_inexact_array)

        def loss(diff):
            return fn(eqx.combine(diff, static), *args, **kwargs)

        value, grads = jax.value_and_grad(loss, has_aux=has_aux)(diff)
        is_leaf = lambda x: x is None or _is_compact(x)  # noqa: E731
        return value, jax.tree.map(_as_sparse_rows, grads, compact, is_leaf=is_leaf)

    return value_and_grad_fn
