"""Train/test splits of interactions, and implicit feedback from explicit ratings."""

import numpy as np

from .._checks import real
from ._interactions import Interactions


def implicit(data: Interactions, threshold: float = 4.0) -> Interactions:
    """The events whose rating is at least `threshold`: explicit ratings as implicit feedback.

    The usual reading of MovieLens for top-K recommendation: a rating of 4 or 5 (of 5) is a
    positive interaction, anything lower is dropped (not a negative).

    **Arguments:**

    - `data`: interactions with a `"rating"` column.
    - `threshold`: the smallest rating kept.

    **Returns:**

    The kept events, in order, in the same id space (users or items left without events keep
    their indices).

    **Example:**

    ```{.python notest}
    # needs MovieLens files
    liked = zoo.data.implicit(zoo.data.movielens("~/data/ml-100k"), threshold=4.0)
    ```
    """
    if "rating" not in data:
        raise ValueError(
            "implicit needs a 'rating' column; data holds "
            f"{sorted(data)}. Synthetic interactions are implicit already."
        )
    example = "zoo.data.implicit(ratings, threshold=4.0)"
    threshold = real("threshold", threshold, example=example)
    kept = np.flatnonzero(data["rating"] >= threshold)
    if kept.size == 0:
        raise ValueError(
            f"threshold must keep some events; got {threshold!r}, above every rating (the "
            f"highest is {np.max(data['rating'], initial=-np.inf)}). For example: {example}"
        )
    return data.take(kept)


def leave_last_out(data: Interactions) -> tuple[Interactions, Interactions]:
    """Holds out each user's latest event: the split of the NCF paper's evaluation.

    Each user with at least two events puts the one with the largest `"timestamp"` in the test
    split (of events with the same timestamp, the last in `data`) and the rest in the training
    split; users with one event keep it for training.

    **Arguments:**

    - `data`: interactions with a `"timestamp"` column.

    **Returns:**

    `(train, test)`, each in the original order and in the same id space as `data`.

    **Example:**

    ```python
    key = jax.random.key(0)
    train, test = zoo.data.leave_last_out(zoo.data.synthetic_interactions(key=key))
    assert len(test["user"]) == train.num_users  # one held-out event per user
    ```
    """
    if "timestamp" not in data:
        raise ValueError(
            "leave_last_out needs a 'timestamp' column to find each user's last event; data "
            f"holds {sorted(data)}. Use zoo.data.random_holdout(data, fraction=0.2) instead."
        )
    rows = np.arange(len(data["user"]))
    # Sorted by user, then time, then position: each user's last row is the one to hold out.
    order = np.lexsort((rows, data["timestamp"], data["user"]))
    users = data["user"][order]
    last = np.append(users[1:] != users[:-1], True)
    first = np.insert(users[1:] != users[:-1], 0, True)
    held_out = np.zeros(len(rows), bool)
    held_out[order[last & ~first]] = True  # a user's only event stays in training
    return data.take(~held_out), data.take(held_out)


def random_holdout(
    data: Interactions, fraction: float = 0.2, *, seed: int = 0
) -> tuple[Interactions, Interactions]:
    """Holds out a random `fraction` of all events.

    Events are drawn without regard to users, so a user may have several held-out events, or
    all of theirs (a cold user, ranked from their untrained embedding).

    **Arguments:**

    - `data`: any interactions.
    - `fraction`: the share of events held out, in (0, 1); `round(fraction * n)` events.
    - `seed`: seeds the NumPy generator that draws them; the same seed gives the same split.

    **Returns:**

    `(train, test)`, each in the original order and in the same id space as `data`.

    **Example:**

    ```python
    liked = zoo.data.synthetic_interactions(200, 100, key=jax.random.key(0))
    train, test = zoo.data.random_holdout(liked, fraction=0.2, seed=0)
    ```
    """
    if not 0 < fraction < 1:
        raise ValueError(
            f"fraction must lie strictly between 0 and 1; got {fraction!r}. For example "
            "zoo.data.random_holdout(data, fraction=0.2)."
        )
    count = len(data["user"])
    chosen = np.random.default_rng(seed).permutation(count)[: round(fraction * count)]
    held_out = np.zeros(count, bool)
    held_out[chosen] = True
    return data.take(~held_out), data.take(held_out)
