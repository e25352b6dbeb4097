"""Negative sampling by explicit key: uniform or by popularity, optionally skipping positives."""

from collections.abc import Mapping
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from .. import _checks
from .._custom_types import IntLike, RealLike
from ._factorized import check_counts

Distribution = Literal["uniform", "popularity"]

_EXAMPLE = (
    'zoo.recsys.NegativeSampler(num_items, distribution="popularity", interactions=train, '
    "exclude_positives=True)"
)


def item_counts(interactions: Mapping[str, np.ndarray], num_items: IntLike) -> np.ndarray:
    """How many interactions each item has: `(num_items,)` int64 counts.

    **Arguments:**

    - `interactions`: a mapping with an `"item"` column of indices, e.g. the training split.
    - `num_items`: the size of the item id space.

    **Returns:**

    `counts[i]`, the number of rows of item `i` (0 for items without any).
    """
    items = _checks.fits_int32("interactions['item']", interactions["item"])
    if items.size and (items.min() < 0 or items.max() >= num_items):
        raise ValueError(
            f"item ids must lie in [0, num_items) = [0, {num_items}); got {items.min()} to "
            f"{items.max()}."
        )
    return np.bincount(items, minlength=num_items)


def _positives_by_user(interactions) -> tuple[np.ndarray, np.ndarray]:
    """CSR of each user's distinct items: `items[indptr[u]:indptr[u + 1]]`, sorted."""
    users = _checks.fits_int32("interactions['user']", interactions["user"])
    items = _checks.fits_int32("interactions['item']", interactions["item"])
    pairs = np.unique(np.stack([users, items], axis=1), axis=0)
    num_users = int(users.max(initial=-1)) + 1
    indptr = np.zeros(num_users + 1, np.int64)
    np.cumsum(np.bincount(pairs[:, 0], minlength=num_users), out=indptr[1:])
    return indptr, pairs[:, 1]


def _segment_contains(values, starts, ends, queries, steps: int):
    """Whether each query is in `values[start:end]` (sorted), by a binary search per query."""

    def halve(_, bounds):
        low, high = bounds
        middle = (low + high) // 2
        right = values.at[middle].get(mode="fill", fill_value=0) < queries
        active = low < high
        return jnp.where(active & right, middle + 1, low), jnp.where(active & ~right, middle, high)

    low, _ = jax.lax.fori_loop(0, steps, halve, (starts, ends))
    found = values.at[low].get(mode="fill", fill_value=-1)
    return (low < ends) & (found == queries)


def _nth_outside(positives, starts, ends, ranks, steps: int):
    """The `ranks`-th item (from 0, in increasing order) that is *not* among a user's sorted,
    distinct positives `positives[start:end]`: `rank + k`, `k` the number of positives `p_j`
    (at place `j` of the segment) with `p_j - j <= rank`. `p_j - j` never decreases along a
    segment, so `k` is a binary search: an exact draw from the complement in `O(log n)`."""

    def halve(_, bounds):
        low, high = bounds
        middle = (low + high) // 2
        below = positives.at[middle].get(mode="fill", fill_value=0) - (middle - starts) <= ranks
        active = low < high
        return jnp.where(active & below, middle + 1, low), jnp.where(active & ~below, middle, high)

    low, _ = jax.lax.fori_loop(0, steps, halve, (starts, ends))
    return ranks + (low - starts)


def _host_checked(name: str, ids) -> Array:
    """`ids` as a JAX array; host ids are checked first, so that none wraps into another."""
    return ids if isinstance(ids, jax.Array) else jnp.asarray(_checks.fits_int32(name, ids))


def _check_something_left(indptr: np.ndarray, num_items: int) -> None:
    """Refuses interactions that leave some user no item to sample as a negative."""
    counts = np.diff(indptr)
    full = np.flatnonzero(counts >= num_items)
    if full.size:
        raise ValueError(
            f"interactions leave user {full[0]} no item to sample as a negative: all "
            f"num_items={num_items} items are among its positives ({full.size} such users). "
            "Drop such users, or sample with exclude_positives=False."
        )


class NegativeSampler(eqx.Module):
    """Draws negative items for users, by explicit key: uniformly or by popularity, and
    optionally never (or rarely) one of the user's known positives.

    Held by a loss (`zoo.recsys.bpr_loss`, `bce_loss`) and called with the key `zoo.train`
    gives the loss at each step, so the negatives are a pure function of the training key.
    Sampling runs on the device in `O(log num_items)` per draw.

    With `exclude_positives=True` and the uniform distribution, each draw is exact: uniform over
    the items that are not the user's positives (a binary search in the user's sorted items).
    With `"popularity"`, a draw that hits one of the user's positives is drawn again, up to
    `max_redraws` times; a user who has interacted with most of the catalogue can still get a
    positive after that. A user whose positives are the whole catalogue leaves nothing to
    sample: the sampler refuses such `interactions`.

    **Example:**

    ```python
    data = zoo.data.synthetic_interactions(200, 100, key=jax.random.key(0))
    train, test = zoo.data.leave_last_out(data)
    key, users = jax.random.key(1), jnp.arange(8)
    sampler = zoo.recsys.NegativeSampler(
        train.num_items, distribution="popularity", interactions=train, exclude_positives=True
    )
    negatives = sampler(key, users, 4)  # (len(users), 4) item ids
    ```
    """

    cumulative: Float[Array, " num_items"] | None
    indptr: Int[Array, " num_users_plus_1"] | None
    positives: Int[Array, " num_positives"] | None
    num_items: int = eqx.field(static=True)
    max_redraws: int = eqx.field(static=True)
    search_steps: int = eqx.field(static=True)

    def __init__(
        self,
        num_items: IntLike,
        *,
        distribution: str = "uniform",
        interactions: Mapping[str, np.ndarray] | None = None,
        exclude_positives: bool = False,
        alpha: RealLike = 1.0,
        max_redraws: IntLike = 8,
    ):
        """**Arguments:**

        - `num_items`: the size of the item id space; draws lie in `[0, num_items)`.
        - `distribution`: `"uniform"`, or `"popularity"`: item `i` with probability
            proportional to `count_i ** alpha` in `interactions`.
        - `interactions`: `{"user": ..., "item": ...}` arrays (the training split), needed for
            `"popularity"` and for `exclude_positives`.
        - `exclude_positives`: redraw negatives that are among the user's items in
            `interactions`.
        - `alpha`: the exponent of the popularity counts (word2vec uses 0.75).
        - `max_redraws`: how many times a draw that hit a positive is drawn again.
        """
        (num_items,) = check_counts(_EXAMPLE, num_items=num_items)
        max_redraws = _checks.integer("max_redraws", max_redraws, minimum=0, example=_EXAMPLE)
        # A negative or infinite exponent turns unseen items' zero counts into infinite weights.
        alpha = _checks.real("alpha", alpha, low=0.0, example=_EXAMPLE)
        if distribution not in ("uniform", "popularity"):
            raise ValueError(
                f'distribution must be "uniform" or "popularity"; got {distribution!r}. '
                f"Example: {_EXAMPLE}"
            )
        if interactions is None and (distribution == "popularity" or exclude_positives):
            raise ValueError(
                f"interactions are needed for distribution={distribution!r} and "
                f"exclude_positives={exclude_positives}: pass the training split. Example: "
                f"{_EXAMPLE}"
            )
        self.cumulative = None
        if distribution == "popularity":
            weights = item_counts(interactions, num_items).astype(np.float64) ** alpha
            if not weights.sum() > 0:  # every draw would land on the last item
                raise ValueError(
                    "distribution='popularity' needs item counts that are not all zero; "
                    f"interactions hold no item (of {len(interactions['item'])} rows). Pass the "
                    f"training split, or use distribution='uniform'. Example: {_EXAMPLE}"
                )
            self.cumulative = jnp.asarray(np.cumsum(weights), jnp.float32)
        self.indptr = self.positives = None
        longest = 0
        if exclude_positives:
            item_counts(interactions, num_items)  # checks the items lie in the catalogue
            indptr, positives = _positives_by_user(interactions)
            _check_something_left(indptr, num_items)
            self.indptr = jnp.asarray(indptr, jnp.int32)
            self.positives = jnp.asarray(positives, jnp.int32)
            longest = int(np.diff(indptr).max(initial=0))
        self.num_items = num_items
        self.max_redraws = max_redraws
        self.search_steps = int(np.ceil(np.log2(longest + 1))) + 1

    def check_covers(self, model, loss: str) -> None:
        """Refuses a model whose catalogue is not the sampler's: a larger one would never see
        its last items drawn, and a smaller one would be looked up out of range (or, in a
        log-q correction, at clamped entries)."""
        num_items = getattr(model, "num_items", None)
        if isinstance(num_items, int) and num_items != self.num_items:
            raise ValueError(
                f"{loss}: the sampler draws from {self.num_items} items but the model has "
                f"num_items={num_items}; make the sampler for the model's catalogue: "
                "zoo.recsys.NegativeSampler(model.num_items, ...)."
            )

    def __call__(
        self, key: PRNGKeyArray, users: Int[ArrayLike, " batch"], num: IntLike
    ) -> Int[Array, "batch {num}"]:
        """**Arguments:**

        - `key`: a `jax.random` key; the same key gives the same negatives.
        - `users`: the users to draw for.
        - `num`: negatives per user (static).

        **Returns:**

        `(len(users), num)` item ids.
        """
        _checks.key("key", key, example="sampler(jax.random.key(0), users, 4)")
        users = _host_checked("users", users)
        shape = (users.shape[0], num)
        if self.positives is not None and self.cumulative is None:
            return self._draw_outside(key, users, shape)
        items = self._draw(jax.random.fold_in(key, 0), shape)
        if self.positives is None:
            return items

        def redraw(round_, items):
            fresh = self._draw(jax.random.fold_in(key, round_ + 1), shape)
            return jnp.where(self.is_positive(users[:, None], items), fresh, items)

        return jax.lax.fori_loop(0, self.max_redraws, redraw, items)

    def is_positive(
        self, users: Int[ArrayLike, "..."], items: Int[ArrayLike, "..."]
    ) -> Bool[Array, "..."]:
        """Whether each `(user, item)` is a known positive (always False without exclusion);
        `users` and `items` broadcast against each other."""
        users, items = _host_checked("users", users), _host_checked("items", items)
        users, items = jnp.broadcast_arrays(users, items)
        if self.positives is None:
            return jnp.zeros(items.shape, bool)
        starts, ends = self._segments(users)
        return _segment_contains(self.positives, starts, ends, items, self.search_steps)

    def _segments(self, users: Int[Array, "..."]) -> tuple[Array, Array]:
        """Where each user's positives start and end in `positives`; empty for users that
        `interactions` did not have."""
        known = (users >= 0) & (users < self.indptr.shape[0] - 1)
        starts = self.indptr.at[users].get(mode="fill", fill_value=0)
        ends = self.indptr.at[users + 1].get(mode="fill", fill_value=0)
        return jnp.where(known, starts, 0), jnp.where(known, ends, 0)

    def _draw_outside(self, key, users, shape) -> Int[Array, "batch num"]:
        """Uniform over each user's non-positive items, exactly (no redraws)."""
        starts, ends = (bound[:, None] for bound in self._segments(users))
        ranks = jax.random.randint(key, shape, 0, self.num_items - (ends - starts))
        starts, ends = jnp.broadcast_to(starts, shape), jnp.broadcast_to(ends, shape)
        return _nth_outside(self.positives, starts, ends, ranks, self.search_steps)

    def _draw(self, key: PRNGKeyArray, shape: tuple[int, int]) -> Int[Array, "batch num"]:
        if self.cumulative is None:
            return jax.random.randint(key, shape, 0, self.num_items)
        # Inverse CDF: O(log num_items) per draw, whatever the catalogue size.
        thresholds = jax.random.uniform(key, shape) * self.cumulative[-1]
        return jnp.minimum(
            jnp.searchsorted(self.cumulative, thresholds, side="right"), self.num_items - 1
        ).astype(jnp.int32)
