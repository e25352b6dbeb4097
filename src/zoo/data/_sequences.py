"""Per-user item sequences for sequential recommenders: histories, and next-item training rows."""

import numpy as np
from jaxtyping import Int32

from .. import _checks
from .._custom_types import IntLike
from ._interactions import Interactions

_EXAMPLE = "zoo.data.sequences(train, max_len=50)"


def sequences(interactions: Interactions, max_len: IntLike = 50) -> dict[str, np.ndarray]:
    """Next-item training rows: each user's time-ordered items, each predicting the next.

    A user's events are put in order of `"timestamp"`, ties broken by their order in
    `interactions` (so the order is the one [`zoo.data.leave_last_out`][] uses to pick the
    held-out event). Of a user's items `i_1, ..., i_n`, the inputs are `i_1, ..., i_{n-1}` and
    the targets `i_2, ..., i_n`, both cut to their last `max_len` and left-padded with the
    padding id `num_items`. Users with fewer than two events have no target and no row.

    Built from a training split, the rows hold nothing of the held-out events: split first
    (`zoo.data.leave_last_out`), then make the sequences of the training part.

    **Arguments:**

    - `interactions`: [`Interactions`][zoo.data.Interactions] with a `"timestamp"` column.
    - `max_len`: the length of every row; longer histories keep their latest items.

    **Returns:**

    A dataset for [`zoo.train`][]: `{"user": (n,), "input": (n, max_len), "target":
    (n, max_len)}`, int32, one row per user with at least two events; `target[r, t]` is the
    item after `input[r, t]`, and both are `num_items` where padded.

    **Example:**

    ```python
    train, test = zoo.data.leave_last_out(zoo.data.synthetic_sequences(key=jax.random.key(0)))
    rows = zoo.data.sequences(train, max_len=50)
    rows["input"].shape  # (2000, 50)
    ```
    """
    users, items, starts, lengths = _time_ordered(interactions, max_len)
    rows = np.flatnonzero(lengths >= 2)
    if len(rows) == 0:
        raise ValueError(
            "interactions must give some user at least two events (an item and the next one); "
            f"got {len(users)} events, none of them a user's second. Example: {_EXAMPLE}"
        )
    row_of = np.full(len(lengths), -1)
    row_of[rows] = np.arange(len(rows))
    place = np.arange(len(users)) - starts[users]  # 0 for a user's first event
    # Pair j of a user (input event j, target event j + 1) sits at slot max_len - (n - 1 - j).
    slot = max_len - (lengths[users] - 1 - place)
    padding = interactions.num_items
    inputs = np.full((len(rows), max_len), padding, np.int32)
    targets = np.full((len(rows), max_len), padding, np.int32)
    is_input = (place < lengths[users] - 1) & (slot >= 0)
    inputs[row_of[users[is_input]], slot[is_input]] = items[is_input]
    # Event j + 1 is the target of pair j: its own slot is one to the right of the pair's.
    is_target = (place >= 1) & (slot >= 1)
    targets[row_of[users[is_target]], slot[is_target] - 1] = items[is_target]
    return {"user": rows.astype(np.int32), "input": inputs, "target": targets}


def histories(interactions: Interactions, max_len: IntLike) -> Int32[np.ndarray, "users max_len"]:
    """Every user's latest `max_len` items in time order, left-padded with `num_items`.

    Row `u` is user `u`'s history (all padding for a user without events): what a sequential
    model reads to score the user's next item.
    """
    users, items, starts, lengths = _time_ordered(interactions, max_len)
    slot = max_len - lengths[users] + (np.arange(len(users)) - starts[users])
    out = np.full((interactions.num_users, max_len), interactions.num_items, np.int32)
    kept = slot >= 0
    out[users[kept], slot[kept]] = items[kept]
    return out


def _time_ordered(interactions: Interactions, max_len: IntLike):
    """Users and items sorted by (user, timestamp, row), each user's first position and count."""
    max_len = _check(interactions, max_len)
    rows = np.arange(len(interactions["user"]))
    order = np.lexsort((rows, interactions["timestamp"], interactions["user"]))
    users = interactions["user"][order].astype(np.int64)
    lengths = np.bincount(users, minlength=interactions.num_users)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return users, interactions["item"][order].astype(np.int32), starts, lengths


def _check(interactions, max_len) -> int:
    if not isinstance(interactions, Interactions):
        raise TypeError(
            "interactions must be zoo.data.Interactions (from zoo.data.movielens, "
            f"synthetic_sequences or a split); got {type(interactions).__name__}. "
            f"Example: {_EXAMPLE}"
        )
    if "timestamp" not in interactions:
        raise ValueError(
            "interactions need a 'timestamp' column to order each user's events; they hold "
            f"{sorted(interactions)}. Example: {_EXAMPLE}"
        )
    return _checks.positive_int("max_len", max_len, example=_EXAMPLE)
