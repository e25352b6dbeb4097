"""`recommend`: each user's top-k items in raw ids, for every recommender."""

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .. import _checks
from .._custom_types import IntLike
from ..data._interactions import Interactions
from ._evaluate import _catalogue_scorer, _num_items, _num_users


class Recommendations(NamedTuple):
    """Each user's top items: `items[r]` (raw item ids, best first) and `scores[r]`, for the
    `r`-th user asked for."""

    items: np.ndarray
    scores: np.ndarray


_EXAMPLE = "zoo.recsys.recommend(model, data, users=['196', '186'], k=10)"
_USERS_PER_CHUNK = 256


def recommend(
    model,
    interactions: Interactions,
    users,
    *,
    k: IntLike = 10,
    exclude_seen: bool = True,
) -> Recommendations:
    """The top-`k` items for each of `users`, as raw ids, from any recommender.

    Every item of the catalogue is scored for each user (one matrix product for factorised
    models, a forward pass per pair for `zoo.recsys.DLRMRecommender`; `zoo.SASRec` reads each
    user's latest items in `interactions`), the user's items in `interactions` are removed
    (unless `exclude_seen=False`), and the best `k` are returned, best first.

    **Arguments:**

    - `model`: a trained recommender (`zoo.MatrixFactorization`, `zoo.TwoTower`,
        `zoo.recsys.DLRMRecommender`, `zoo.SASRec`), sized by the id space of `interactions`.
    - `interactions`: what is known of the users: the events the model trained on, or all of
        them; its `user_ids` and `item_ids` translate raw ids.
    - `users`: raw user ids (as in `interactions.user_ids`), one or a sequence.
    - `k`: how many items per user.
    - `exclude_seen`: leave out the items each user already has in `interactions`.

    **Returns:**

    A [`Recommendations`][zoo.recsys.Recommendations] `(items, scores)` of shape
    `(len(users), k)`: raw item ids and their scores.

    **Raises:**

    `ValueError` naming `users` for an id that is not in `interactions`, or a user without
    events there (no recommender can rank for a user it never saw: it would rank from an
    untrained vector); naming `k` when a user has fewer than `k` items left to recommend.

    **Example:**

    ```python
    data = zoo.data.synthetic_movielens(key=jax.random.key(0))
    model = zoo.MatrixFactorization(data.num_users, data.num_items, key=jax.random.key(1))
    top = zoo.recsys.recommend(model, data, users=[1, 2], k=10)
    top.items.shape, top.scores.shape  # (2, 10) raw MovieLens-style ids, and their scores
    ```
    """
    if not isinstance(interactions, Interactions):
        raise TypeError(
            "interactions must be zoo.data.Interactions, whose user_ids and item_ids translate "
            f"raw ids; got {type(interactions).__name__}. For example: {_EXAMPLE}"
        )
    num_items = _num_items(model, interactions)
    k = _checks.positive_int("k", k, example=_EXAMPLE)
    exclude_seen = _checks.boolean("exclude_seen", exclude_seen, example=_EXAMPLE)
    indices = _user_indices(interactions, users, _num_users(model))
    seen_users, seen_items = _seen(interactions, indices) if exclude_seen else (None, None)
    left = num_items - (np.bincount(seen_users, minlength=len(indices)) if exclude_seen else 0)
    if np.min(left) < k:
        worst = interactions.user_ids[indices[int(np.argmin(left))]].item()
        raise ValueError(
            f"k must be at most the items left to recommend; got k={k}, but user {worst!r} has "
            f"{np.min(left)} of num_items={num_items}. Use a smaller k."
        )
    ranker = getattr(model, "ranker", None)
    scorer = model if ranker is None else ranker(interactions)
    items, scores = [], []
    for start in range(0, len(indices), _USERS_PER_CHUNK):
        chunk = slice(start, start + _USERS_PER_CHUNK)
        mask = np.zeros((len(indices[chunk]), num_items), bool)
        if exclude_seen:
            inside = (seen_users >= start) & (seen_users < start + _USERS_PER_CHUNK)
            mask[seen_users[inside] - start, seen_items[inside]] = True
        top_scores, top_items = _top_k(scorer, jnp.asarray(indices[chunk]), jnp.asarray(mask), k)
        items.append(np.asarray(top_items))
        scores.append(np.asarray(top_scores))
    top = np.concatenate(items)
    return Recommendations(items=interactions.item_ids[top], scores=np.concatenate(scores))


@eqx.filter_jit
def _top_k(
    scorer, users: Int[Array, " users"], seen, k: int
) -> tuple[Float[Array, "users k"], Int[Array, "users k"]]:
    scores = _catalogue_scorer(scorer, seen.shape[1])(users)
    top_scores, top_items = jax.lax.top_k(jnp.where(seen, -jnp.inf, scores), k)
    return top_scores, top_items


def _user_indices(interactions: Interactions, users, num_users: int | None) -> np.ndarray:
    """The indices of raw `users`, refused unless each has events in `interactions`."""
    raw = np.atleast_1d(np.asarray(users))
    if raw.ndim != 1 or len(raw) == 0:
        raise ValueError(f"users must be one raw user id or a 1-d sequence of them. {_EXAMPLE}")
    ids = interactions.user_ids
    if raw.dtype.kind != ids.dtype.kind and ids.dtype.kind in "iu" and raw.dtype.kind in "US":
        raw = np.array([int(u) if u.lstrip("-").isdigit() else -1 for u in raw])
    order = np.argsort(ids)
    place = np.clip(np.searchsorted(ids, raw, sorter=order), 0, len(ids) - 1)
    indices = order[place]
    unknown = ids[indices] != raw
    if unknown.any():
        raise ValueError(
            f"users must be raw ids of interactions.user_ids; {raw[unknown][0].item()!r} is not "
            f"one ({int(unknown.sum())} of {len(raw)} unknown)."
        )
    has_events = np.bincount(interactions["user"], minlength=interactions.num_users) > 0
    if num_users is not None and num_users != interactions.num_users:
        raise ValueError(
            f"model.num_users must be the data's, interactions.num_users="
            f"{interactions.num_users}; got {num_users}: the model was built for other data."
        )
    cold = ~has_events[indices]
    if cold.any():
        raise ValueError(
            f"users must have events in interactions: user {raw[cold][0].item()!r} has none, so "
            "the model never trained on them and cannot rank for them (it would rank from an "
            "untrained vector). Recommend popular items to new users instead."
        )
    return indices


def _seen(interactions: Interactions, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(row, item)` of each user's distinct seen items, `row` the user's place in `indices`."""
    pairs = np.unique(np.stack([interactions["user"], interactions["item"]], axis=1), axis=0)
    indptr = np.searchsorted(pairs[:, 0], np.arange(interactions.num_users + 1))
    counts = np.diff(indptr)[indices]
    items = [pairs[indptr[user] : indptr[user + 1], 1] for user in indices]
    return np.repeat(np.arange(len(indices)), counts), np.concatenate(items).astype(np.int64)
