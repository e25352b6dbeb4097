"""`SparseRows`: the gradient (or update) of an embedding table, as its touched rows."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, Key

from .. import _checks
from .._nn._embedding import checked_ids


class SparseRows(eqx.Module):
    """Rows `ids` of a `(num_rows, dim)` table, with one vector each.

    Produced by `zoo.sparse.value_and_grad` as the gradient of an `Embedding.weight`, and by the
    sparse optimizers as its update. The ids are *coalesced*: each row appears at most once, and
    the other entries of the static length hold the out-of-range sentinel `num_rows`, with zero
    values. Every scatter of `SparseRows` into a table uses `mode="drop"`, so the sentinels
    touch nothing.

    **Attributes:**

    - `ids`: `(n,)` int32 row ids, each at most once, in increasing order apart from the
        sentinels (from `zoo.sparse.value_and_grad`, a sorted list of the ids looked up, each
        repeat replaced by `num_rows`).
    - `values`: `(n, dim)` one vector per id.
    - `num_rows`: the number of rows of the table (static).

    The ids are stored as a JAX key array (`keyed_ids`), which has no arithmetic: tree
    functions that treat every leaf as a number (`optax.tree.norm`, `optax.global_norm`,
    `optax.clip_by_global_norm`, `optax.tree.scale`, ...) would count or scale integer ids,
    silently, and raise a `TypeError` instead. Use `zoo.sparse.global_norm`,
    `zoo.sparse.clip_by_global_norm` and `zoo.sparse.apply_updates`.
    """

    keyed_ids: Key[Array, " n"]
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
        ids = checked_ids(ids, num_rows + 1, "SparseRows", "num_rows + 1")
        bits = jnp.stack([ids.astype(jnp.uint32), jnp.zeros(ids.shape, jnp.uint32)], axis=-1)
        self.keyed_ids = jax.random.wrap_key_data(bits, impl="threefry2x32")
        self.values = jnp.asarray(values)
        self.num_rows = num_rows

    @property
    def ids(self) -> Int[Array, " n"]:
        """The row ids, `(n,)` int32."""
        return jax.random.key_data(self.keyed_ids)[..., 0].astype(jnp.int32)

    def _refuse_arithmetic(self, *args, **kwargs):
        # `optax.apply_updates` adds updates to parameters leaf by leaf: `table + SparseRows`.
        raise TypeError(
            f"a zoo.sparse.SparseRows (rows of a table of {self.num_rows} rows) is not an "
            "array: apply sparse updates with zoo.sparse.apply_updates(model, updates), not "
            "optax.apply_updates or eqx.apply_updates; measure and clip sparse gradients with "
            "zoo.sparse.global_norm and zoo.sparse.clip_by_global_norm."
        )

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _refuse_arithmetic
    __truediv__ = __rtruediv__ = __neg__ = __matmul__ = __rmatmul__ = _refuse_arithmetic


def is_sparse_rows(x) -> bool:
    """True for a `SparseRows` (use as `is_leaf=` when mapping over sparse gradients)."""
    return isinstance(x, SparseRows)
