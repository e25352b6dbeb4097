"""`SparseRows`: the gradient (or update) of an embedding table, as its touched rows."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int

from .. import _checks
from .._nn._embedding import checked_ids


class SparseRows(eqx.Module):
    """Rows `ids` of a `(num_rows, dim)` table, with one vector each.

    Produced by `zoo.sparse.value_and_grad` as the gradient of an `Embedding.weight`, and by the
    sparse optimizers as its update. The ids are *coalesced*: each row appears at most once, and
    the other entries of the static length hold the out-of-range sentinel `num_rows`, with zero
    values. Every scatter of `SparseRows` into a table uses `mode="drop"`, so the sentinels
    touch nothing.

    **Fields:**

    - `ids`: `(n,)` int32 row ids, each at most once, in increasing order apart from the
        sentinels (from `zoo.sparse.value_and_grad`, a sorted list of the ids looked up, each
        repeat replaced by `num_rows`).
    - `values`: `(n, dim)` one vector per id.
    - `num_rows`: the number of rows of the table (static).
    """

    ids: Int[Array, " n"]
    values: Float[Array, "n dim"]
    num_rows: int = eqx.field(static=True)

    def __init__(self, ids: Int[ArrayLike, " n"], values: Float[ArrayLike, "n dim"], num_rows: int):
        """**Arguments:** as the fields. Every id must lie in `[0, num_rows]` (`num_rows`
        itself being the sentinel): a negative id would otherwise reach a scatter that wraps
        it to the last row. Concrete ids are checked now, traced ones when the program runs
        (an error, whatever Equinox's error mode)."""
        num_rows = _checks.positive_int(
            "num_rows", num_rows, example="zoo.sparse.SparseRows(ids, values, num_rows=1000)"
        )
        ids = jnp.asarray(ids)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise TypeError(f"ids of a SparseRows must be integers; got dtype {ids.dtype}.")
        self.ids = checked_ids(ids, num_rows + 1, "SparseRows", "num_rows + 1")
        self.values = jnp.asarray(values)
        self.num_rows = num_rows


def is_sparse_rows(x) -> bool:
    """True for a `SparseRows` (use as `is_leaf=` when mapping over sparse gradients)."""
    return isinstance(x, SparseRows)
