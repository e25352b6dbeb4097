"""`SparseRows`: the gradient (or update) of an embedding table, as its touched rows."""

import equinox as eqx
from jaxtyping import Array, Float, Int


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


def is_sparse_rows(x) -> bool:
    """True for a `SparseRows` (use as `is_leaf=` when mapping over sparse gradients)."""
    return isinstance(x, SparseRows)
