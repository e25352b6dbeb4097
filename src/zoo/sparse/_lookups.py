"""The ids a loss looks up in each embedding table, wherever in the loss it looks them up.

Two passes, both inside the caller's trace:

1. *Count* (abstract: `jax.make_jaxpr`, nothing runs). Every lookup passes its ids through a
   marker of its table, and a walk of the jaxpr adds up the markers' sizes, times the length
   of each enclosing `lax.scan`, taking the larger branch of each `lax.cond`. That bounds the
   number of ids each table sees in one call of the loss.
2. *Record.* Each table gets a log, a `jax.Ref` of that many ids filled with the out-of-range
   sentinel, and a cursor; every lookup writes its ids at the cursor and moves it on. The write
   happens where the lookup runs: inside `lax.scan`, `lax.cond`, `jax.checkpoint` and a nested
   `jax.jit`. Under `jax.vmap` a batched write into an unbatched ref is not allowed, so a
   `custom_vmap` rule lifts the write out of each `vmap`: the batched ids are written whole.

Under `jax.jit` XLA keeps of the recording pass only what computes the ids.
"""

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap
from jax.extend.core import ClosedJaxpr, Jaxpr
from jaxtyping import Array, Float, Int

from .._nn._embedding import Embedding, TableView


class _Marker:
    """The identity on ids, recognisable in a jaxpr, and lifted out of every `jax.vmap`.

    With a log, it also writes the ids into the log (at the level where they are unbatched).
    """

    def __init__(self, log: "_Log | None" = None):
        self.log = log

        @custom_vmap
        def mark(ids):
            return ids

        @mark.def_vmap
        def rule(axis_size, in_batched, ids):
            del axis_size
            return self(ids), in_batched[0]

        self._mark = mark
        self.rule = rule

    def __call__(self, ids: Int[Array, "*ids"]) -> Int[Array, "*ids"]:
        if self.log is not None:
            return self._write(self.log.ids, self.log.cursor, ids)
        return self._mark(ids)

    def _write(self, log, cursor, ids):
        # The refs travel as arguments: a custom_vmap body may not close over a ref.
        @custom_vmap
        def write(log, cursor, ids):
            flat = jnp.ravel(ids).astype(jnp.int32)
            start = cursor[...]
            log[start + jnp.arange(flat.shape[0], dtype=jnp.int32)] = flat
            cursor[...] = start + flat.shape[0]
            return ids

        @write.def_vmap
        def rule(axis_size, in_batched, log, cursor, ids):
            del axis_size
            return self._write(log, cursor, ids), in_batched[2]

        return write(log, cursor, ids)


class _Log:
    """A table's recorded ids: `capacity` slots, the sentinel where nothing was written."""

    def __init__(self, capacity: int, sentinel: int):
        self.ids = jax.new_ref(jnp.full((capacity,), sentinel, jnp.int32))
        self.cursor = jax.new_ref(jnp.zeros((), jnp.int32))


class _Marked(TableView):
    """A table whose lookups pass their ids through a marker first."""

    table: Float[Array, "rows dim"]
    marker: _Marker = eqx.field(static=True)
    # The whole table's rows: on a mesh, `table` is this device's shard, and ids are global.
    rows: int = eqx.field(static=True)

    @property
    def num_rows(self) -> int:
        return self.rows

    def table_struct(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct((self.rows, self.table.shape[1]), self.table.dtype)

    def lookup(self, ids: Int[Array, "*ids"], padding_idx: int | None = None) -> Array:
        # Padding ids are marked as the sentinel: they get no gradient, so no row.
        if padding_idx is not None:
            ids = jnp.where(ids == padding_idx, self.num_rows, ids)
        marked = self.marker(ids)
        return self.table.at[marked].get(mode="fill", fill_value=0, wrap_negative_indices=False)


def is_embedding(x) -> bool:
    return isinstance(x, Embedding)


def split_params(model) -> tuple[Any, Any]:
    """`(tables, rest)`: every `Embedding.weight` of `model`, and every other floating array."""

    def mask(node):
        return eqx.tree_at(lambda e: e.weight, node, True) if is_embedding(node) else False

    spec = jax.tree.map(mask, model, is_leaf=is_embedding)
    return eqx.partition(eqx.filter(model, eqx.is_inexact_array), spec)


def tables(model) -> list[Embedding]:
    """The `Embedding` modules of `model`, in pytree order."""
    return [x for x in jax.tree.leaves(model, is_leaf=is_embedding) if is_embedding(x)]


def swap_tables(view: Callable[..., TableView], model, *others):
    """`model` with each `Embedding.weight` replaced by `view(embedding, *matching_others)`,
    told where in `model` its table is (for error messages)."""

    def swap(path, node, *rest):
        if not is_embedding(node):
            return node
        named = dataclasses.replace(view(node, *rest), where=f"model{jax.tree_util.keystr(path)}")
        return eqx.tree_at(lambda e: e.weight, node, named)

    return jax.tree_util.tree_map_with_path(swap, model, *others, is_leaf=is_embedding)


def _with_markers(model, make_marker: Callable[[Embedding], _Marker]):
    markers = []

    def view(embedding):
        markers.append(make_marker(embedding))
        return _Marked(embedding.weight, markers[-1], embedding.num_embeddings)

    return swap_tables(view, model), markers


def sub_jaxprs(params: dict) -> Iterator[Jaxpr]:
    """The jaxprs held in an equation's `params` (a `scan`'s body, a `cond`'s branches...)."""
    for value in params.values():
        for sub in value if isinstance(value, tuple | list) else (value,):
            if isinstance(sub, ClosedJaxpr):
                yield sub.jaxpr
            elif isinstance(sub, Jaxpr):
                yield sub


def _count(jaxpr: Jaxpr, index: dict, times: int) -> list[int]:
    """Ids per table that `jaxpr` looks up at most, `times` runs of it."""
    counts = [0] * len(index)
    for eqn in jaxpr.eqns:
        name, params = eqn.primitive.name, eqn.params
        rule = getattr(params.get("rule"), "__wrapped__", None)
        if name == "custom_vmap_call" and rule in index:
            counts[index[rule]] += times * sum(v.aval.size for v in eqn.invars)
            continue
        if name == "scan":
            inner = [_count(params["jaxpr"].jaxpr, index, times * params["length"])]
        elif name == "cond":
            branches = [_count(b.jaxpr, index, times) for b in params["branches"]]
            inner = [[max(column) for column in zip(*branches, strict=True)]]
        else:
            inner = [_count(sub, index, times) for sub in sub_jaxprs(params)]
            if name == "while" and any(any(c) for c in inner):
                raise ValueError(
                    "zoo.sparse looks up an embedding table inside jax.lax.while_loop (or a "
                    "fori_loop with traced bounds): it runs an unknown number of times, and JAX "
                    "cannot differentiate it in reverse mode. Give the loop static bounds: "
                    "jax.lax.scan, or jax.lax.fori_loop(0, n, ...) with a Python int n."
                )
        for column in inner:
            counts = [a + b for a, b in zip(counts, column, strict=True)]
    return counts


_VMAP_OF_COND = (
    "zoo.sparse looks up an embedding table inside jax.lax.cond under jax.vmap (a cond on a "
    "batched predicate). An optimizer with per-row state (rowwise_adagrad, adagrad, lazy_adam) "
    "records the ids each table is looked up with, and JAX runs both branches of such a cond "
    "as a select, which cannot record. Look the rows up outside the cond and choose with "
    "jnp.where, or train the tables with zoo.sparse.sgd, whose in-place step records nothing."
)


def looked_up_ids(fn: Callable[..., Any], model, *args, **kwargs) -> list[Int[Array, " n"]]:
    """Per table of `model` (in `tables(model)` order), every id `fn(model, *args, **kwargs)`
    looks it up with, duplicates kept, the sentinel `num_embeddings` in the unused slots."""
    embeddings = tables(model)
    if not embeddings:
        return []
    counting, markers = _with_markers(model, lambda e: _Marker())
    jaxpr = jax.make_jaxpr(lambda: fn(counting, *args, **kwargs))()
    capacities = _count(jaxpr.jaxpr, {m.rule: i for i, m in enumerate(markers)}, 1)
    logs = [_Log(c, e.num_embeddings) for c, e in zip(capacities, embeddings, strict=True)]
    it = iter(logs)
    recording, _ = _with_markers(model, lambda e: _Marker(next(it)))
    try:
        fn(recording, *args, **kwargs)
    except NotImplementedError as error:
        if "vmap-of-cond" not in str(error):
            raise
        raise ValueError(_VMAP_OF_COND) from error
    return [jax.freeze(log.ids) for log in logs]
