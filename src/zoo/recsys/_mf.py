"""`zoo.MatrixFactorization`: user and item embeddings with optional biases, scored by a dot."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .. import _checks
from .._custom_types import IntLike
from .._io._rebuild import Rebuildable
from .._nn._embedding import Embedding
from ._factorized import Factorized, check_counts

_EXAMPLE = "zoo.MatrixFactorization(num_users=943, num_items=1682, dim=32, key=jax.random.key(0))"


def _zeros(key: PRNGKeyArray, shape: tuple[int, int], dtype) -> Array:
    del key
    return jnp.zeros(shape, dtype)


class MatrixFactorization(Factorized, Rebuildable, saved_as="zoo.MatrixFactorization"):
    """Matrix factorisation: `score(u, i) = p_u . q_i + b_u + b_i + g`.

    User and item vectors `p_u`, `q_i` are rows of two [`zoo.Embedding`][] tables; the biases
    `b_u`, `b_i` are one-column tables and `g` a scalar, each optional and starting at zero.
    Every table trains densely with optax or sparsely with `zoo.sparse`.

    `user_vector` and `item_vector` are `dim + 2` long, `[p_u, 1, b_u + g]` and `[q_i, b_i, 1]`,
    so that their dot product is the whole score: `embed_users(users) @ embed_items(items).T`
    scores every pair, biases included.

    **Example:**

    ```python
    key, users, items = jax.random.key(0), jnp.arange(4), jnp.arange(4)
    model = zoo.MatrixFactorization(num_users=943, num_items=1682, dim=32, key=key)
    model(jnp.array(3), jnp.array(7))  # one score
    jax.vmap(model)(users, items)  # a batch of pairs
    scores = model.embed_users(users) @ model.embed_items(jnp.arange(1682)).T  # (users, 1682)
    ```
    """

    user_embedding: Embedding
    item_embedding: Embedding
    user_bias: Embedding | None
    item_bias: Embedding | None
    global_bias: Float[Array, ""] | None
    num_users: int = eqx.field(static=True)
    num_items: int = eqx.field(static=True)
    dim: int = eqx.field(static=True)

    def __init__(
        self,
        num_users: IntLike,
        num_items: IntLike,
        dim: IntLike = 32,
        *,
        user_bias: bool = True,
        item_bias: bool = True,
        global_bias: bool = True,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `num_users`, `num_items`: the sizes of the id spaces (ids `0 .. n - 1`).
        - `dim`: the size of the user and item embeddings.
        - `user_bias`, `item_bias`, `global_bias`: whether the score has each bias.
        - `key`: a `jax.random.key` for the embeddings' initialisation.
        """
        num_users, num_items, dim = check_counts(
            _EXAMPLE, num_users=num_users, num_items=num_items, dim=dim
        )
        _checks.key("key", key, example=_EXAMPLE)
        user_key, item_key = jax.random.split(key)
        self.user_embedding = Embedding(num_users, dim, key=user_key)
        self.item_embedding = Embedding(num_items, dim, key=item_key)
        self.user_bias = Embedding(num_users, 1, init=_zeros, key=user_key) if user_bias else None
        self.item_bias = Embedding(num_items, 1, init=_zeros, key=item_key) if item_bias else None
        self.global_bias = jnp.zeros(()) if global_bias else None
        self.num_users = num_users
        self.num_items = num_items
        self.dim = dim

    def user_vector(self, user: Int[Array, ""]) -> Float[Array, " dim_plus_2"]:
        """`[p_u, 1, b_u + g]`, the user's half of the score."""
        bias = jnp.zeros(())
        if self.user_bias is not None:
            bias = bias + self.user_bias(user)[0]
        if self.global_bias is not None:
            bias = bias + self.global_bias
        return jnp.concatenate([self.user_embedding(user), jnp.ones(1), bias[None]])

    def item_vector(self, item: Int[Array, ""]) -> Float[Array, " dim_plus_2"]:
        """`[q_i, b_i, 1]`, the item's half of the score."""
        bias = jnp.zeros(1) if self.item_bias is None else self.item_bias(item)
        return jnp.concatenate([self.item_embedding(item), bias, jnp.ones(1)])
