"""The baselines every ranking report shows: most popular first, and a random order."""

from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .. import _checks
from ._factorized import Factorized
from ._sampling import item_counts


class Popularity(Factorized):
    """Recommends the items with the most training interactions to everyone.

    `score(u, i)` is item `i`'s count in the training data. The non-personalised baseline a
    recommender must beat: `zoo.recsys.evaluate_ranking` reports it beside every model.

    **Example:**

    ```python
    data = zoo.data.synthetic_interactions(200, 100, key=jax.random.key(0))
    train, test = zoo.data.leave_last_out(data)
    baseline = zoo.recsys.Popularity(train, train.num_items)
    zoo.recsys.evaluate_ranking(baseline, train, test, baselines=False)
    ```
    """

    counts: Float[Array, " num_items"]
    num_items: int = eqx.field(static=True)

    def __init__(self, interactions: Mapping[str, np.ndarray], num_items: int):
        """**Arguments:**

        - `interactions`: the training interactions, with an `"item"` column.
        - `num_items`: the size of the item id space.
        """
        self.counts = jnp.asarray(item_counts(interactions, num_items), jnp.float32)
        self.num_items = num_items

    def user_vector(self, user: Int[Array, ""]) -> Float[Array, " 1"]:
        """`[1]`: every user gets the same scores."""
        return jnp.ones(1)

    def item_vector(self, item: Int[Array, ""]) -> Float[Array, " 1"]:
        """`[count_i]`."""
        return self.counts[item][None]


class RandomScores(eqx.Module):
    """Scores every pair with an independent uniform random number: the chance-level baseline.

    The score of `(u, i)` depends only on the key, the user and the item, so it is the same
    however the evaluation is batched. Its expected HR@K under full ranking is about
    `K / (number of candidate items)`.
    """

    key: PRNGKeyArray
    num_items: int = eqx.field(static=True)

    def __init__(self, num_items: int, *, key: PRNGKeyArray):
        """**Arguments:**

        - `num_items`: the size of the item id space.
        - `key`: a `jax.random` key; the same key gives the same scores.
        """
        self.key = _checks.key("key", key, example="zoo.recsys.RandomScores(num_items, key=key)")
        self.num_items = _checks.positive_int("num_items", num_items)

    def __call__(
        self, user: Int[Array, ""], item: Int[Array, ""], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, ""]:
        """A uniform number in [0, 1) drawn from `(self.key, user, item)`; `key` is ignored."""
        del key
        return jax.random.uniform(jax.random.fold_in(jax.random.fold_in(self.key, user), item))
