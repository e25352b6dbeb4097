"""Cleaning interactions: duplicates, a rating threshold, a k-core, and compact id spaces.

Each cleaning function returns `(kept, removed)`: the kept events, in order and in the same id
space, and a [`Removed`][zoo.data.Removed] count of what went, so that every step of a
pipeline can be reported.
"""

from typing import NamedTuple

import numpy as np

from .. import _checks
from .._custom_types import IntLike, RealLike
from ._interactions import Interactions


class Removed(NamedTuple):
    """What a cleaning step removed: `events`, and the `users` and `items` it left without
    any event (they keep their indices until [`zoo.data.compact`][])."""

    events: int
    users: int
    items: int


def _removed(before: Interactions, after: Interactions) -> Removed:
    def present(data, column):
        return len(np.unique(data[column]))

    return Removed(
        events=len(before["user"]) - len(after["user"]),
        users=present(before, "user") - present(after, "user"),
        items=present(before, "item") - present(after, "item"),
    )


def _checked(data, function: str) -> Interactions:
    if not isinstance(data, Interactions):
        raise TypeError(
            f"data must be zoo.data.Interactions (from zoo.data.read_interactions, movielens or "
            f"a synthetic set); got {type(data).__name__}. For example: "
            f"zoo.data.{function}(data)"
        )
    return data


def _time_order(data: Interactions) -> np.ndarray:
    """Row order by time (then position): the position alone without a `"timestamp"`."""
    rows = np.arange(len(data["user"]))
    return rows if "timestamp" not in data else np.lexsort((rows, data["timestamp"]))


def dedupe(data: Interactions, keep: str = "first") -> tuple[Interactions, Removed]:
    """Repeated `(user, item)` pairs: keep each pair's first event, its last, or all of them.

    Rating data holds a pair once; event logs (plays, purchases, re-watches) often hold it
    many times. `"first"` and `"last"` go by `"timestamp"` (then by position; by position
    alone without timestamps). `"all"` keeps repeat consumption as it is: the explicit choice
    for sequence models, which see a re-watch as an event of its own (the evaluation then
    counts each held-out pair once and keeps it a candidate, see
    [`zoo.recsys.evaluate_ranking`][]).

    **Arguments:**

    - `data`: the interactions.
    - `keep`: `"first"`, `"last"` or `"all"`.

    **Returns:**

    `(kept, removed)`: the kept events in their original order, and a
    [`Removed`][zoo.data.Removed].

    **Example:**

    ```python
    data = zoo.data.from_columns(np.array([1, 1, 2]), np.array([7, 7, 7]),
                                 timestamp=np.array([5, 9, 3]))
    kept, removed = zoo.data.dedupe(data, keep="last")
    assert kept["timestamp"].tolist() == [9, 3] and removed.events == 1
    ```
    """
    data = _checked(data, "dedupe")
    keep = _checks.one_of("keep", keep, ("first", "last", "all"))
    if keep == "all":
        return data, Removed(0, 0, 0)
    order = _time_order(data)
    if keep == "last":
        order = order[::-1]
    pairs = data["user"][order].astype(np.int64) * data.num_items + data["item"][order]
    _, first = np.unique(pairs, return_index=True)
    kept = data.take(np.sort(order[first]))
    return kept, _removed(data, kept)


def rating_threshold(data: Interactions, threshold: RealLike = 4.0) -> tuple[Interactions, Removed]:
    """The events rated at least `threshold`: explicit ratings as implicit feedback.

    The usual reading of MovieLens for top-K recommendation: 4 and 5 stars are positives,
    lower ratings are dropped (not negatives). [`zoo.data.implicit`][] is the same, without
    the count.

    **Returns:**

    `(kept, removed)`, as [`dedupe`][zoo.data.dedupe].

    **Example:**

    ```python
    data = zoo.data.synthetic_movielens(key=jax.random.key(0))
    liked, removed = zoo.data.rating_threshold(data, 4.0)
    print(f"dropped {removed.events} events rated below 4")
    ```
    """
    data = _checked(data, "rating_threshold")
    if "rating" not in data:
        raise ValueError(
            f"data must have a 'rating' column for a rating threshold; it holds {sorted(data)}."
        )
    example = "zoo.data.rating_threshold(data, threshold=4.0)"
    threshold = _checks.real("threshold", threshold, example=example)
    kept = np.flatnonzero(data["rating"] >= threshold)
    if kept.size == 0:
        raise ValueError(
            f"threshold must keep some events; got {threshold!r}, above every rating (the "
            f"highest is {np.max(data['rating'], initial=-np.inf)}). For example: {example}"
        )
    liked = data.take(kept)
    return liked, _removed(data, liked)


def k_core(
    data: Interactions, users: IntLike = 5, items: IntLike = 5
) -> tuple[Interactions, Removed]:
    """The largest part of `data` in which every user has at least `users` events and every
    item at least `items`: removes sparse users and items until none is left.

    Removing an item can take a user below the bar, and the other way round, so the filter
    repeats until nothing changes (the iterative k-core of RecBole and most papers). Events
    are counted as they are: dedupe first to count distinct items.

    **Arguments:**

    - `data`: the interactions.
    - `users`: the fewest events a kept user has.
    - `items`: the fewest events a kept item has.

    **Returns:**

    `(kept, removed)`, as [`dedupe`][zoo.data.dedupe]; the id space is unchanged, so follow
    with [`compact`][zoo.data.compact] to drop the emptied ids.

    **Example:**

    ```python
    data = zoo.data.synthetic_movielens(key=jax.random.key(0))
    core, removed = zoo.data.k_core(data, users=5, items=5)
    print(removed)  # Removed(events=..., users=0, items=...)
    ```
    """
    data = _checked(data, "k_core")
    example = "zoo.data.k_core(data, users=5, items=5)"
    least_user = _checks.positive_int("users", users, example=example)
    least_item = _checks.positive_int("items", items, example=example)
    kept = np.ones(len(data["user"]), bool)
    while True:
        user_counts = np.bincount(data["user"][kept], minlength=data.num_users)
        item_counts = np.bincount(data["item"][kept], minlength=data.num_items)
        enough = kept & (user_counts[data["user"]] >= least_user)
        enough &= item_counts[data["item"]] >= least_item
        if (enough == kept).all():
            break
        kept = enough
    if not kept.any():
        raise ValueError(
            f"users={least_user}, items={least_item} remove every event: no user and item "
            f"reach those counts together. Use smaller counts, e.g. {example}"
        )
    core = data.take(kept)
    return core, _removed(data, core)


def compact(data: Interactions) -> Interactions:
    """`data` in the smallest id space: users and items without events are dropped and the
    others renumbered `0, 1, ...` in their old order; `user_ids` and `item_ids` follow.

    Models are sized by the id space (`num_users`, `num_items`): compact after filtering so
    that no table row, and no ranked item, belongs to an id without events.

    **Example:**

    ```python
    data = zoo.data.from_columns(np.array([1, 2, 3]), np.array([7, 8, 9]))
    assert zoo.data.compact(data.take(np.array([0, 2]))).num_items == 2
    ```
    """
    data = _checked(data, "compact")
    user_ids, users = np.unique(data["user"], return_inverse=True)
    item_ids, items = np.unique(data["item"], return_inverse=True)
    arrays = dict(data) | {"user": users.astype(np.int32), "item": items.astype(np.int32)}
    return Interactions(arrays, user_ids=data.user_ids[user_ids], item_ids=data.item_ids[item_ids])
