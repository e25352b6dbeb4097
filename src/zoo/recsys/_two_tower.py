"""`zoo.TwoTower`: a user tower and an item tower, scored by a dot or cosine with a temperature."""

from collections.abc import Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from .. import _checks
from .._custom_types import IntLike, RealLike
from .._io._rebuild import Rebuildable
from .._nn._embedding import Embedding
from .._nn._mlp import MLP
from ._factorized import Factorized, check_counts

Similarity = Literal["dot", "cosine"]

_EXAMPLE = (
    "zoo.TwoTower(num_users=943, num_items=1682, dim=32, hidden=(64,), key=jax.random.key(0))"
)


class _Tower(eqx.Module):
    """An id embedding and one embedding per side feature, concatenated, then an MLP."""

    ids: Embedding
    features: tuple[Embedding, ...]
    table: Int[Array, "num_ids num_features"] | None
    mlp: MLP

    def __init__(self, num_ids, table, embedding_dim, hidden, dim, *, key):
        keys = jax.random.split(key, 2 + (0 if table is None else table.shape[1]))
        self.ids = Embedding(num_ids, embedding_dim, key=keys[0])
        sizes = () if table is None else [int(column.max()) + 1 for column in table.T]
        self.features = tuple(
            Embedding(size, embedding_dim, key=k) for size, k in zip(sizes, keys[2:], strict=True)
        )
        self.table = None if table is None else jnp.asarray(table, jnp.int32)
        in_size = embedding_dim * (1 + len(self.features))
        self.mlp = MLP(in_size, dim, hidden, key=keys[1])

    def __call__(self, index: Int[Array, ""]) -> Float[Array, " dim"]:
        parts = [self.ids(index)]
        if self.table is not None:
            parts += [feature(self.table[index, j]) for j, feature in enumerate(self.features)]
        return self.mlp(jnp.concatenate(parts))


def _feature_table(kind: str, table: ArrayLike | None, num_ids: int) -> np.ndarray | None:
    """`table` as a checked `(num_ids, num_features)` array of feature ids; `kind` names the id."""
    if table is None:
        return None
    table = _checks.fits_int32(f"{kind}_features", table)
    if table.ndim == 1:
        table = table[:, None]
    if (
        table.ndim != 2
        or len(table) != num_ids
        or not np.issubdtype(table.dtype, np.integer)
        or (table.size and table.min() < 0)
    ):
        raise ValueError(
            f"{kind}_features must be non-negative integer feature ids of shape "
            f"(num_{kind}s, num_features), one row per {kind} and one column per categorical "
            f"feature; got {table.dtype} of shape {table.shape}. Example: zoo.TwoTower("
            f"num_users, num_items, {kind}_features=genre_of_each_{kind}[:, None], key=key)"
        )
    return table


class TwoTower(Factorized, Rebuildable, saved_as="zoo.TwoTower"):
    """A two-tower retrieval model: `score(u, i) = sim(user_tower(u), item_tower(i)) / temperature`.

    Each tower embeds its id (a [`zoo.Embedding`][]) and, optionally, categorical side features
    of that id (one embedding table per feature), concatenates them and maps them through a
    [`zoo.MLP`][] to a `dim`-vector. `sim` is the dot product or the cosine.

    Side features are given once, as integer tables with one row per id: `item_features[i, f]`
    is the value of feature `f` of item `i` (a genre, a decade, ...). The model looks them up
    itself, so it is called with ids alone, and each feature's vocabulary is its column's
    maximum plus one.

    `embed_users(users) @ embed_items(items).T` gives every pair's score (the vectors are
    normalised for `"cosine"` and the user side divided by the temperature), so retrieval over
    the catalogue is one matrix product and `zoo.recsys.in_batch_softmax_loss` trains it.

    **Example:**

    ```python
    key, users = jax.random.key(0), jnp.arange(4)
    genres = np.arange(1682) % 19  # one genre per item, say
    model = zoo.TwoTower(
        num_users=943, num_items=1682, dim=32, hidden=(64,),
        item_features=genres[:, None], similarity="cosine", temperature=0.1, key=key,
    )
    items = model.embed_items(jnp.arange(model.num_items))  # once
    top10 = jax.lax.top_k(model.embed_users(users) @ items.T, 10)[1]
    ```
    """

    user_tower: _Tower
    item_tower: _Tower
    num_users: int = eqx.field(static=True)
    num_items: int = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    similarity: Similarity = eqx.field(static=True)
    temperature: float = eqx.field(static=True)

    def __init__(
        self,
        num_users: IntLike,
        num_items: IntLike,
        dim: IntLike = 32,
        *,
        hidden: Sequence[IntLike] = (64,),
        embedding_dim: IntLike | None = None,
        user_features: ArrayLike | None = None,
        item_features: ArrayLike | None = None,
        similarity: str = "dot",
        temperature: RealLike = 1.0,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `num_users`, `num_items`: the sizes of the id spaces (ids `0 .. n - 1`).
        - `dim`: the size of the towers' outputs, the vectors that are compared.
        - `hidden`: the hidden widths of each tower's MLP; `()` makes a tower linear.
        - `embedding_dim`: the size of the id and feature embeddings; default `dim`.
        - `user_features`: optional integer table `(num_users, num_user_features)` of
            categorical side features per user (a 1-d array is one feature).
        - `item_features`: the same for items, `(num_items, num_item_features)`.
        - `similarity`: `"dot"` or `"cosine"`.
        - `temperature`: divides the similarity; below 1 sharpens a softmax over items (about
            0.05 to 0.2 suits `"cosine"`).
        - `key`: a `jax.random.key` for the initialisation.
        """
        _checks.key("key", key, example=_EXAMPLE)
        embedding_dim = dim if embedding_dim is None else embedding_dim
        num_users, num_items, dim, embedding_dim = check_counts(
            _EXAMPLE, num_users=num_users, num_items=num_items, dim=dim, embedding_dim=embedding_dim
        )
        if similarity not in ("dot", "cosine"):
            raise ValueError(
                f'similarity must be "dot" or "cosine"; got {similarity!r}. Example: '
                'zoo.TwoTower(943, 1682, similarity="cosine", temperature=0.1, key=key)'
            )
        # An infinite temperature would zero every score (and a NaN one make them all NaN).
        temperature = _checks.positive_real(
            "temperature", temperature, example="zoo.TwoTower(..., temperature=0.1, key=key)"
        )
        user_table = _feature_table("user", user_features, num_users)
        item_table = _feature_table("item", item_features, num_items)
        user_key, item_key = jax.random.split(key)
        hidden = tuple(hidden)
        self.user_tower = _Tower(num_users, user_table, embedding_dim, hidden, dim, key=user_key)
        self.item_tower = _Tower(num_items, item_table, embedding_dim, hidden, dim, key=item_key)
        self.num_users = num_users
        self.num_items = num_items
        self.dim = dim
        self.similarity = similarity
        self.temperature = float(temperature)

    def user_vector(self, user: Int[Array, ""]) -> Float[Array, " dim"]:
        """The user tower's output, normalised for `"cosine"`, divided by the temperature."""
        return self._compared(self.user_tower(user)) / self.temperature

    def item_vector(self, item: Int[Array, ""]) -> Float[Array, " dim"]:
        """The item tower's output, normalised for `"cosine"`."""
        return self._compared(self.item_tower(item))

    def _compared(self, vector: Float[Array, " dim"]) -> Float[Array, " dim"]:
        if self.similarity == "dot":
            return vector
        return vector / jnp.maximum(jnp.linalg.norm(vector), 1e-12)
