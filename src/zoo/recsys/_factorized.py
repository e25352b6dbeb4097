"""The shape shared by factorised recommenders: a score that is a dot product of two vectors."""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .. import _checks


class Factorized(eqx.Module):
    """A recommender whose score is `user_vector(user) . item_vector(item)`.

    Subclasses define the two per-example vectors; the batched `embed_users` and `embed_items`
    follow, and with them retrieval over the whole catalogue as one matrix product
    (`embed_users(users) @ embed_items(items).T`), in-batch softmax training, and fast full
    ranking in `zoo.recsys.evaluate_ranking`.
    """

    num_items: eqx.AbstractVar[int]

    @abc.abstractmethod
    def user_vector(self, user: Int[Array, ""]) -> Float[Array, " dim"]:
        """The vector of one user."""

    @abc.abstractmethod
    def item_vector(self, item: Int[Array, ""]) -> Float[Array, " dim"]:
        """The vector of one item."""

    def __call__(
        self, user: Int[Array, ""], item: Int[Array, ""], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, ""]:
        """**Arguments:**

        - `user`: one user index. Batch with `jax.vmap(model)(users, items)`.
        - `item`: one item index.
        - `key`: ignored; accepted for a uniform model API.

        **Returns:**

        The score of the pair, a scalar: higher ranks the item higher for the user.
        """
        del key
        return jnp.dot(self.user_vector(user), self.item_vector(item))

    def embed_users(self, users: Int[Array, " users"]) -> Float[Array, "users dim"]:
        """The vectors of many users, one row each; `embed_users(u) @ embed_items(i).T` are the
        scores of every pair."""
        return jax.vmap(self.user_vector)(users)

    def embed_items(self, items: Int[Array, " items"]) -> Float[Array, "items dim"]:
        """The vectors of many items, one row each (e.g. `jnp.arange(model.num_items)`, once,
        for retrieval over the whole catalogue)."""
        return jax.vmap(self.item_vector)(items)


def is_factorized(model) -> bool:
    """Whether `model` offers `embed_users` and `embed_items` (scores as dot products)."""
    return callable(getattr(model, "embed_users", None)) and callable(
        getattr(model, "embed_items", None)
    )


def check_counts(example: str, **counts) -> tuple[int, ...]:
    """`counts` as Python ints, in order; refuses (`zoo._checks.positive_int`) any that is not a
    positive int. Static fields then hold ints, whichever integer type the caller passed."""
    return tuple(
        _checks.positive_int(name, value, example=example) for name, value in counts.items()
    )
