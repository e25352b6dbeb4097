"""`zoo.Embedding`: a lookup table with optional bag combiners, trainable densely or sparsely."""

import abc
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


class TableView(eqx.Module):
    """What an `Embedding` reads its rows from instead of its weight, inside `zoo.sparse` passes.

    `zoo.sparse.value_and_grad` swaps each table for a view that records or redirects lookups;
    every other use of the module is unchanged. Reading the view as an array (`weight.T`,
    `h @ weight`, `weight.shape`) raises an error that names the table (`where`).
    """

    where: str = eqx.field(static=True, default="", kw_only=True)

    @abc.abstractmethod
    def lookup(self, ids: Int[Array, "*ids"]) -> Float[Array, "*ids dim"]:
        """The rows of `ids`, shape `(*ids.shape, embedding_dim)`."""

    def _read_directly(self) -> str:
        return (
            f"zoo.sparse: the embedding table {self.where or ''} is read directly inside the "
            "loss (as an array: weight tying such as `h @ embedding.weight.T`, weight decay, "
            "`.shape`, ...). A sparse step sees only the rows the loss looks up, so a table is "
            "readable only by calling its Embedding, e.g. `model.items(ids)`. Read the shape "
            "from `embedding.num_embeddings` / `embedding.embedding_dim`, or train this model "
            "with an optax optimizer (the dense path: eqx.filter_value_and_grad)."
        )

    def __matmul__(self, other):
        raise TypeError(self._read_directly())

    def __rmatmul__(self, other):
        raise TypeError(self._read_directly())

    def __getattr__(self, name: str):
        # Only reached for attributes the view lacks; dunder probes stay plain AttributeErrors.
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(self._read_directly())


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

        Out-of-range ids raise a `ValueError` when `ids` is concrete; under `jax.jit` or
        `jax.vmap` the same check is an `eqx.error_if`, which raises when the computation runs.
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
            return self.weight.lookup(ids)
        # "fill" and no wrapping of negative ids: an id that escaped the check reads NaN, never
        # a neighbouring row.
        return self.weight.at[ids].get(mode="fill", wrap_negative_indices=False)

    def _checked(self, ids: Int[ArrayLike, "..."]) -> Int[Array, "..."]:
        if not isinstance(ids, jax.Array):
            # Host ids are checked before JAX stores them: int64 would wrap into valid rows.
            ids = _checks.fits_int32("ids", ids)
        ids = jnp.asarray(ids)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise TypeError(
                f"ids must be integers, got dtype {ids.dtype}: embedding(ids.astype(jnp.int32))."
            )
        if self.combiner is not None and ids.ndim == 0:
            raise ValueError(
                f"with combiner={self.combiner!r} the last axis of ids is a bag; got a scalar id. "
                "Pass a bag such as embedding(jnp.array([id])), or use combiner=None."
            )
        message = f"ids must lie in [0, num_embeddings) = [0, {self.num_embeddings})"
        if isinstance(ids, jax.core.Tracer):
            bad = jnp.any((ids < 0) | (ids >= self.num_embeddings))
            return eqx.error_if(ids, bad, message)
        # Concrete ids are checked with NumPy: jnp ops here could be staged into a trace
        # (a closed-over constant inside jax.lax.cond, say) and no longer give a bool.
        concrete = np.asarray(ids)
        if concrete.size and (concrete.min() < 0 or concrete.max() >= self.num_embeddings):
            raise ValueError(f"{message}; got ids from {concrete.min()} to {concrete.max()}.")
        return ids
