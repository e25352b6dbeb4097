"""`zoo.Embedding`: a lookup table with optional bag combiners, trainable densely or sparsely."""

import abc
import contextlib
import contextvars
from collections.abc import Iterator
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from .. import _checks
from .._custom_types import IntLike
from .._io._rebuild import Rebuildable

Combiner = Literal["sum", "mean"]

_RIGHT_CALL = "zoo.Embedding(num_embeddings=10_000, embedding_dim=64, key=jax.random.key(0))"


def _integer_ids(ids: Int[ArrayLike, "..."], refusal: str, example: str) -> Int[Array, "..."]:
    """`ids` as a JAX integer array, refused with `refusal` and the right call otherwise."""
    if not isinstance(ids, jax.Array):
        # Host ids are checked before JAX stores them: int64 would wrap into valid rows.
        ids = _checks.fits_int32("ids", ids)
    ids = jnp.asarray(ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(f"{refusal}, got dtype {ids.dtype}: {example}.")
    return ids


class TableView(eqx.Module):
    """What an `Embedding`'s `weight` is inside `zoo.sparse` passes: a stand-in that records or
    redirects lookups.

    Rows are read by calling the `Embedding`, or from the weight itself as from an array:
    `weight[ids]`, `weight[ids, :]`, `weight.at[ids].get(mode=..., fill_value=...)`,
    `weight.take(ids, axis=0)` and `jnp.take(weight, ids, axis=0)` (with its `mode` and
    `fill_value`; under `jax.vmap` and `jax.checkpoint` too, not inside `lax.scan` or
    `lax.cond`). Reading the whole table (`h @ weight.T`, `jnp.square(weight)`, `weight.shape`,
    `jnp.take(weight, ids)` without `axis=0`) raises a `TypeError` that names the table
    (`where`) and the two ways out.

    `jnp.take` converts the view to an array (`__jax_array__`) inside its own jit, where no
    method of the view sees the ids: zoo.sparse finds those reads in a trace of the loss
    (`zoo.sparse._takes`), with the view numbered by `probe`.
    """

    where: str = eqx.field(static=True, default="", kw_only=True)
    # Set on the copies `zoo.sparse` traces a loss with to find `jnp.take(weight, ids, axis=0)`:
    # there the view converts to a stand-in of the table (`whole_table_stand_in`).
    probe: int | None = eqx.field(static=True, default=None, kw_only=True)

    @property
    @abc.abstractmethod
    def num_rows(self) -> int:
        """The number of rows of the table."""

    @abc.abstractmethod
    def lookup(
        self, ids: Int[Array, "*ids"], padding_idx: int | None = None
    ) -> Float[Array, "*ids dim"]:
        """The rows of `ids` (checked: in range), shape `(*ids.shape, embedding_dim)`. Rows of
        `padding_idx` may be anything: the `Embedding` zeroes them, and they get no gradient."""

    @abc.abstractmethod
    def table_struct(self) -> jax.ShapeDtypeStruct:
        """The whole table's shape `(num_rows, embedding_dim)` and dtype."""

    def unused_id(self) -> int:
        """An id a masked-out read may look up: its row gets a zero gradient."""
        return self.num_rows

    def read(
        self,
        ids: Int[ArrayLike, "*ids"],
        *,
        mode: str | None = None,
        fill_value=None,
        wrap_negative_indices: bool = True,
    ) -> Float[Array, "*ids dim"]:
        """The rows of `ids`, as `weight.at[ids].get(mode=..., fill_value=...)` reads them.

        Without a mode (or `"promise_in_bounds"`), every id must be a row: out-of-range ids
        (negative ones included) raise, as in an `Embedding` call. `"fill"` (or `"drop"`)
        reads `fill_value` (NaN by default) for them, `"clip"` the nearest row.
        """
        ids = _integer_ids(
            ids,
            f"ids must be integers to read rows of {self._name()}",
            "weight[ids.astype(jnp.int32)]",
        )
        if mode in (None, "promise_in_bounds"):
            return self.lookup(checked_ids(ids, self.num_rows, self._name()))
        if mode not in ("fill", "drop", "clip"):
            raise ValueError(
                f'mode must be None, "fill", "drop", "clip" or "promise_in_bounds"; got {mode!r}.'
            )
        if wrap_negative_indices:
            ids = jnp.where(ids < 0, ids + self.num_rows, ids)
        if mode == "clip":
            return self.lookup(jnp.clip(ids, 0, self.num_rows - 1))
        valid = (ids >= 0) & (ids < self.num_rows)
        rows = self.lookup(jnp.where(valid, ids, self.unused_id()))
        fill = jnp.asarray(jnp.nan if fill_value is None else fill_value, rows.dtype)
        return jnp.where(valid[..., None], rows, fill)

    def __getitem__(self, index) -> Array:
        rest = index[1:] if isinstance(index, tuple) else ()
        ids = index[0] if isinstance(index, tuple) else index
        if (
            isinstance(ids, slice)
            or ids is Ellipsis
            or ids is None
            or any(not _whole_axis(r) for r in rest)
        ):
            raise TypeError(self._read_directly(f"weight[{index!r}]"))
        return self.read(ids)

    def take(self, ids, axis=None, *, mode=None, fill_value=None) -> Array:
        """`weight.take(ids, axis=0)`: the rows of `ids`, as `read` reads them (without a
        mode every id must be a row, where `jnp.take` defaults to `mode="fill"`)."""
        if axis != 0:
            raise TypeError(self._read_directly(f"weight.take(ids, axis={axis!r})"))
        return self.read(ids, mode=mode, fill_value=fill_value)

    @property
    def at(self) -> "_TableAt":
        """`weight.at[ids].get(...)` reads rows; the table is not written inside a loss."""
        return _TableAt(self)

    def _name(self) -> str:
        return f"the embedding table {self.where}" if self.where else "an embedding table"

    def _read_directly(self, how: str = "as an array") -> str:
        return (
            f"zoo.sparse: {self._name()} is read whole inside the loss ({how}: weight tying "
            "such as `h @ weight.T`, weight decay such as `jnp.square(weight)`, `.shape`, "
            "`jnp.take(weight, ids)` without axis=0). A sparse step sees only the rows the "
            "loss looks up. Two ways out: read rows, by calling the Embedding "
            "(`model.items(ids)`) or with `weight[ids]`, `weight.at[ids].get()`, "
            "`weight.take(ids, axis=0)` or `jnp.take(weight, ids, axis=0)` (a penalty "
            "on the rows looked up stays sparse; shapes are `embedding.num_embeddings` and "
            "`embedding.embedding_dim`); or train the table densely: hold a table the loss "
            "reads whole (a tied output matrix, say) as a plain array, not a zoo.Embedding, "
            "so that the dense optimizer of zoo.sparse.partition trains it, or train the whole "
            "model with optax (eqx.filter_value_and_grad). See docs/sparse.md, "
            '"Reading a table inside the loss".'
        )

    def _refuse(self, *args, **kwargs):
        raise TypeError(self._read_directly())

    def __bool__(self) -> bool:  # a view is a value, even though len() refuses
        return True

    def __jax_array__(self) -> Array:
        # `jnp.take(weight, ...)` (and every jnp function) converts its argument here, inside
        # its own jit, before any hook sees the ids. Only while zoo.sparse probes the loss is
        # the conversion answered, by a stand-in it then finds in the trace.
        if self.probe is None:
            self._refuse()
        return whole_table_stand_in(self.probe, self.table_struct())

    # Every other way of using the table as one array: arithmetic, NumPy conversion.
    __array__ = __len__ = __iter__ = _refuse
    __matmul__ = __rmatmul__ = __add__ = __radd__ = __sub__ = __rsub__ = _refuse
    __mul__ = __rmul__ = __truediv__ = __rtruediv__ = __pow__ = __neg__ = _refuse

    def __getattr__(self, name: str):
        # Only reached for attributes the view lacks; dunder probes stay plain AttributeErrors.
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(self._read_directly(f"weight.{name}"))


STAND_IN = "zoo_sparse_whole_table_"
"""The name of the jit that makes a probed view's stand-in: `STAND_IN` and the view's number."""


def whole_table_stand_in(probe: int, struct: jax.ShapeDtypeStruct) -> Array:
    """An array of the table's shape, made by a jit named `STAND_IN{probe}` so that a trace
    shows where view `probe` was converted to an array. Only ever traced: zoo.sparse replays
    the trace with each row gather from it turned into a read of the view, and refuses it
    otherwise."""

    def stand_in():
        return jnp.zeros(struct.shape, struct.dtype)

    stand_in.__name__ = stand_in.__qualname__ = f"{STAND_IN}{probe}"
    return jax.jit(stand_in)()


def _whole_axis(index) -> bool:
    return index is Ellipsis or (isinstance(index, slice) and index == slice(None))


class _TableAt:
    """`weight.at`, on a `TableView`."""

    def __init__(self, view: TableView):
        self.view = view

    def __getitem__(self, index) -> "_TableAtIndex":
        ids = index[0] if isinstance(index, tuple) else index
        if isinstance(index, tuple) and any(not _whole_axis(r) for r in index[1:]):
            raise TypeError(self.view._read_directly(f"weight.at[{index!r}]"))
        return _TableAtIndex(self.view, ids)


class _TableAtIndex:
    def __init__(self, view: TableView, ids):
        self.view, self.ids = view, ids

    def get(self, *, mode=None, fill_value=None, wrap_negative_indices=True, **kwargs) -> Array:
        del kwargs  # indices_are_sorted, unique_indices, out_sharding: hints only
        return self.view.read(
            self.ids, mode=mode, fill_value=fill_value, wrap_negative_indices=wrap_negative_indices
        )

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise TypeError(
            f"zoo.sparse: {self.view._name()} is written inside the loss (`weight.at[ids]."
            f"{name}(...)`); a loss only reads its tables: read the rows with "
            "`weight.at[ids].get()` and compute with them."
        )


class OutOfRangeIdError(ValueError):
    """An id outside `[0, num_rows)`: raised eagerly, or by the program that looked it up."""


def _out_of_range(table: str, num_rows: int, low, high, bound: str) -> str:
    return (
        f"{table}: ids must lie in [0, {bound}) = [0, {num_rows}); got ids out of range, "
        f"from {low} to {high}."
    )


def _raise_out_of_range(table: str, num_rows: int, bound: str):
    def report(ids):
        # Under jax.vmap, `ids` holds the whole batch's (expanded dims).
        ids = np.asarray(ids)
        bad = ids[(ids < 0) | (ids >= num_rows)]
        raise OutOfRangeIdError(_out_of_range(table, num_rows, bad.min(), bad.max(), bound))

    return report


def checked_ids(
    ids: Int[Array, "*ids"], num_rows: int, table: str, bound: str = "num_embeddings"
) -> Int[Array, "*ids"]:
    """`ids`, refused unless every one lies in `[0, num_rows)`; `table` names the table.

    Concrete ids raise an `OutOfRangeIdError` now. Traced ones raise it when the program runs,
    whatever Equinox's error mode (`EQX_ON_ERROR=nan` would turn an id into the largest int,
    which a gather clamps to the last row), and before anything reads them: the ids pass
    through the check (`zoo._checks.raise_if`). The message names the table and the
    offending ids' range.
    """
    if not isinstance(ids, jax.core.Tracer):
        # With NumPy: jnp ops here could be staged into a trace (a closed-over constant
        # inside jax.lax.cond, say) and no longer give a bool.
        concrete = np.asarray(ids)
        bad = concrete[(concrete < 0) | (concrete >= num_rows)]
        if bad.size:
            raise OutOfRangeIdError(_out_of_range(table, num_rows, bad.min(), bad.max(), bound))
        return ids
    if ids.size == 0:
        return ids
    bad = (ids < 0) | (ids >= num_rows)
    axes = _AGREEING_AXES.get()
    if axes:
        return _checked_together(ids, bad, axes, table, num_rows, bound)
    return _checks.raise_if(ids, bad, _raise_out_of_range(table, num_rows, bound))


# Inside `jax.shard_map`, an id check that raised on one device only would leave the others
# waiting for it in the program's next collective, for ever: there the devices first agree
# whether any of them holds a bad id (and its range), then all raise together.
_AGREEING_AXES: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "zoo_id_checks_agree_over", default=()
)


@contextlib.contextmanager
def id_checks_agree_over(axes: tuple[str, ...]) -> Iterator[None]:
    """Within this context, the id checks traced are collective over the mesh `axes`: every
    device raises when any device's ids are out of range. For the body of a `jax.shard_map`
    over `axes` whose devices each run the same lookups."""
    token = _AGREEING_AXES.set(tuple(axes))
    try:
        yield
    finally:
        _AGREEING_AXES.reset(token)


def _checked_together(ids, bad, axes: tuple[str, ...], table: str, num_rows: int, bound: str):
    import equinox.internal as eqxi  # only here: importing zoo stays light

    info = jnp.iinfo(ids.dtype)
    # One all-reduce of three numbers, over a whole `jax.vmap` batch too: whether any device
    # has a bad id, minus the lowest (the lowest int raised by one so that it negates), and
    # the highest.
    low = jnp.min(jnp.where(bad, jnp.maximum(ids, info.min + 1), info.max))
    high = jnp.max(jnp.where(bad, ids, info.min))
    local = [eqxi.unvmap_max(x) for x in (jnp.any(bad).astype(ids.dtype), -low, high)]
    flag, minus_low, high = jax.lax.pmax(jnp.stack(local), axes)
    # The ids pass through the check beside the extremes, so that nothing reads them before
    # it ran.
    through = jnp.concatenate([jnp.stack([flag, -minus_low, high]), jnp.ravel(ids)])
    checked = _checks.raise_if(through, flag > 0, _raise_agreed(table, num_rows, bound))
    return checked[3:].reshape(ids.shape)


def _raise_agreed(table: str, num_rows: int, bound: str):
    def report(through):
        # Under jax.vmap, one row per example: (any bad on some device, lowest, highest).
        rows = np.asarray(through).reshape(-1, np.shape(through)[-1])[:, :3]
        rows = rows[rows[:, 0] > 0]
        low, high = rows[:, 1].min(), rows[:, 2].max()
        raise OutOfRangeIdError(_out_of_range(table, num_rows, low, high, bound))

    return report


_INIT_BLOCK_ELEMENTS = 2**20  # rows drawn per block: about 4 MB of float32


def default_init(key: PRNGKeyArray, shape: tuple[int, int], dtype) -> Array:
    """Normal with standard deviation `1/sqrt(embedding_dim)`, so that a row has norm about 1.

    Drawn block by block into the table in place: `jax.random.normal` of the whole shape makes
    several table-sized temporaries (the random bits among them), so a large table would need
    about four times its size in memory just to be created.
    """
    rows, dim = shape
    block = min(rows, max(1, _INIT_BLOCK_ELEMENTS // dim))
    scale = np.asarray(1 / np.sqrt(dim), dtype)

    def fill(index, table):
        # The last block ends at the last row (it overlaps its neighbour when rows % block).
        start = jnp.minimum(index * block, rows - block)
        values = jax.random.normal(jax.random.fold_in(key, index), (block, dim), dtype) * scale
        return jax.lax.dynamic_update_slice_in_dim(table, values, start, axis=0)

    return jax.lax.fori_loop(0, -(-rows // block), fill, jnp.zeros(shape, dtype))


class Embedding(Rebuildable, saved_as="zoo.Embedding"):
    """A table of `num_embeddings` vectors of size `embedding_dim`, looked up by integer ids.

    Lookups of any integer shape return `(*ids.shape, embedding_dim)`. With a `combiner`, the last
    axis of `ids` is a *bag* of ids that is reduced (`"sum"` or `"mean"`), as in
    `torch.nn.EmbeddingBag`. Ids equal to `padding_idx` look up zeros, receive no gradient and do
    not count in a mean.

    The table trains with any optax optimizer (a dense gradient of the whole table) or, in
    `O(batch)` per step, with `zoo.sparse` (see `zoo.sparse.value_and_grad`).

    !!! example

        ```python
        emb = zoo.Embedding(1000, 16, padding_idx=0, combiner="mean", key=jax.random.key(0))
        emb(jnp.array([3, 7]))              # (16,): the mean of rows 3 and 7
        jax.vmap(emb)(jnp.array([[3, 0]]))  # (1, 16): row 3 (padding is not counted)
        ```
    """

    weight: Float[Array, "num_embeddings embedding_dim"]
    num_embeddings: int = eqx.field(static=True)
    embedding_dim: int = eqx.field(static=True)
    padding_idx: int | None = eqx.field(static=True)
    combiner: Combiner | None = eqx.field(static=True)

    def __init__(
        self,
        num_embeddings: IntLike,
        embedding_dim: IntLike,
        *,
        padding_idx: IntLike | None = None,
        combiner: str | None = None,  # checked below, with a message better than a type error
        init=default_init,
        dtype=jnp.float32,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `num_embeddings`: the number of rows (valid ids are `0 <= id < num_embeddings`).
        - `embedding_dim`: the size of each row.
        - `padding_idx`: an id that stands for "nothing": its row is zero at initialisation, its
            lookups give zeros and no gradient, and it does not count in a `"mean"` bag.
        - `combiner`: `None` (one row per id), `"sum"` or `"mean"` (reduce the last axis of the
            ids, a bag, to one row).
        - `init`: a `jax.nn.initializers`-style function `init(key, shape, dtype)`. The default
            draws from a normal with standard deviation `1/sqrt(embedding_dim)`.
        - `dtype`: the floating dtype of the table.
        - `key`: a `jax.random` key for `init`. (Keyword only.)
        """
        num_embeddings = _checks.positive_int("num_embeddings", num_embeddings, example=_RIGHT_CALL)
        embedding_dim = _checks.positive_int("embedding_dim", embedding_dim, example=_RIGHT_CALL)
        padding_example = (
            f"zoo.Embedding({num_embeddings}, {embedding_dim}, padding_idx=0, key=key)"
        )
        if padding_idx is not None:
            padding_idx = _checks.integer("padding_idx", padding_idx, example=padding_example)
            if not 0 <= padding_idx < num_embeddings:
                raise ValueError(
                    f"padding_idx must be a valid id, 0 <= padding_idx < num_embeddings="
                    f"{num_embeddings}; got {padding_idx}. For example {padding_example}."
                )
        if not isinstance(combiner, str | None) or combiner not in (None, "sum", "mean"):
            raise ValueError(
                f'combiner must be None, "sum" or "mean"; got {combiner!r}. For example '
                f'zoo.Embedding({num_embeddings}, {embedding_dim}, combiner="mean", key=key).'
            )
        _checks.float_dtype(
            "dtype",
            dtype,
            example=f"zoo.Embedding({num_embeddings}, {embedding_dim}, dtype=jnp.float16, key=k)",
        )
        if not callable(init):
            raise TypeError(
                f"init must be a function init(key, shape, dtype) such as "
                f"jax.nn.initializers.normal(0.01); got {init!r}."
            )
        _checks.key("key", key, example=_RIGHT_CALL)
        weight = init(key, (num_embeddings, embedding_dim), dtype)
        if padding_idx is not None:
            weight = weight.at[padding_idx].set(0)
        self.weight = weight
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        self.combiner = combiner

    def __call__(self, ids: Int[ArrayLike, "..."], *, key: PRNGKeyArray | None = None) -> Array:
        """**Arguments:**

        - `ids`: integer ids of any shape, each in `[0, num_embeddings)`. With a combiner, the
            last axis is a bag and must exist.
        - `key`: ignored; accepted for a uniform layer API.

        **Returns:**

        `(*ids.shape, embedding_dim)` rows, or `(*ids.shape[:-1], embedding_dim)` with a
        combiner (an all-padding bag gives zeros).

        **Raises:**

        Out-of-range ids raise an `OutOfRangeIdError` (a `ValueError`) when `ids` is concrete;
        under `jax.jit` or `jax.vmap` the same check raises when the computation runs, before
        any row is read, whatever Equinox's error mode (`EQX_ON_ERROR`). The message names the
        table (its path in the model inside `zoo.sparse` steps) and the offending ids' range.
        Ids are never clamped.
        """
        del key
        ids = self._checked(ids)
        rows = self._lookup(ids)
        if self.padding_idx is not None:
            rows = jnp.where(self._is_padding(ids)[..., None], jnp.zeros((), rows.dtype), rows)
        if self.combiner is None:
            return rows
        total = jnp.sum(rows, axis=-2)
        if self.combiner == "sum":
            return total
        count = jnp.sum(~self._is_padding(ids), axis=-1, keepdims=True)
        return total / jnp.maximum(count, 1).astype(total.dtype)

    def _is_padding(self, ids: Int[Array, "*ids"]) -> Array:
        if self.padding_idx is None:
            return jnp.zeros(ids.shape, bool)
        return ids == self.padding_idx

    def _lookup(self, ids: Int[Array, "*ids"]) -> Float[Array, "*ids dim"]:
        if isinstance(self.weight, TableView):
            return self.weight.lookup(ids, self.padding_idx)
        # "fill" and no wrapping of negative ids: an id that escaped the check reads NaN, never
        # a neighbouring row.
        return self.weight.at[ids].get(mode="fill", wrap_negative_indices=False)

    def _checked(self, ids: Int[ArrayLike, "..."]) -> Int[Array, "..."]:
        ids = _integer_ids(ids, "ids must be integers", "embedding(ids.astype(jnp.int32))")
        if self.combiner is not None and ids.ndim == 0:
            raise ValueError(
                f"with combiner={self.combiner!r} the last axis of ids is a bag; got a scalar id. "
                "Pass a bag such as embedding(jnp.array([id])), or use combiner=None."
            )
        return checked_ids(ids, self.num_embeddings, self._name())

    def _name(self) -> str:
        if isinstance(self.weight, TableView):
            return self.weight._name()
        return f"zoo.Embedding({self.num_embeddings}, {self.embedding_dim})"
