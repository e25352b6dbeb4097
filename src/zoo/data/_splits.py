"""Train/test splits of interactions, and implicit feedback from explicit ratings."""

import numpy as np

from .._checks import real
from .._custom_types import RealLike
from ._cleaning import rating_threshold
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
    return rating_threshold(data, threshold)[0]


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
    _need_time(data, "leave_last_out")
    held_out = _from_the_end(data, 1, at_least=2)
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


def _need_time(data: Interactions, function: str) -> None:
    if "timestamp" not in data:
        raise ValueError(
            f"{function} needs a 'timestamp' column to order each user's events; data holds "
            f"{sorted(data)}. Use zoo.data.random_holdout(data, fraction=0.2) instead."
        )


def _from_the_end(data: Interactions, place: int, *, at_least: int) -> np.ndarray:
    """A mask of each user's `place`-th event from the end (1: the latest; ties of time broken
    by position) for users with at least `at_least` events."""
    rows = np.arange(len(data["user"]))
    order = np.lexsort((rows, data["timestamp"], data["user"]))
    users = data["user"][order]
    counts = np.bincount(users, minlength=data.num_users)
    ends = np.cumsum(counts)  # one past each user's last sorted row
    position = np.arange(len(order)) - (ends - counts)[users]  # 0 for a user's first
    chosen = (position == counts[users] - place) & (counts[users] >= at_least)
    mask = np.zeros(len(rows), bool)
    mask[order[chosen]] = True
    return mask


def leave_one_out(data: Interactions) -> tuple[Interactions, Interactions, Interactions]:
    """Train, validation and test by each user's time: the SASRec and RecBole protocol.

    Each user with at least three events puts the latest (the largest `"timestamp"`; of equal
    times, the last in `data`) in `test`, the one before it in `valid`, and the rest in
    `train`; users with fewer keep everything in `train`. Model selection (early stopping)
    reads `valid`; `test` is read once, at the end, with the user's history up to then
    (`train` and `valid` together) as the events the ranking excludes and SASRec reads.

    Repeat consumption is kept: a held-out item that the user had before is a legal target,
    and the evaluation keeps it a candidate (see [`zoo.recsys.evaluate_ranking`][]).

    **Arguments:**

    - `data`: interactions with a `"timestamp"` column.

    **Returns:**

    `(train, valid, test)`, each in the original order and in the id space of `data`.

    **Example:**

    ```python
    data = zoo.data.synthetic_movielens(key=jax.random.key(0))
    train, valid, test = zoo.data.leave_one_out(data)
    assert len(valid["user"]) == len(test["user"]) == data.num_users
    ```
    """
    _need_time(data, "leave_one_out")
    test = _from_the_end(data, 1, at_least=3)
    valid = _from_the_end(data, 2, at_least=3)
    return data.take(~(test | valid)), data.take(valid), data.take(test)


def temporal_split(
    data: Interactions, valid: RealLike = 0.1, test: RealLike = 0.1
) -> tuple[Interactions, Interactions, Interactions]:
    """Train, validation and test by one global time: the latest events of all are held out.

    All events are put in time order (of equal times, by position); the last `test` share is
    `test`, the `valid` share before it `valid`, the rest `train`. Unlike
    [`leave_one_out`][zoo.data.leave_one_out], no model ever trains on an event later than one
    it is tested on. A held-out user may have several held-out events, or none in `train` at
    all (a user who arrived late): the evaluation counts such users and drops them, as
    nothing can rank for them (see [`zoo.recsys.evaluate_ranking`][]).

    **Arguments:**

    - `data`: interactions with a `"timestamp"` column.
    - `valid`, `test`: the shares of all events held out, each in [0, 1), together below 1.

    **Returns:**

    `(train, valid, test)`, each in the original order and in the id space of `data`.

    **Example:**

    ```python
    data = zoo.data.synthetic_movielens(key=jax.random.key(0))
    train, valid, test = zoo.data.temporal_split(data, valid=0.1, test=0.1)
    assert train["timestamp"].max() <= valid["timestamp"].min()
    ```
    """
    _need_time(data, "temporal_split")
    example = "zoo.data.temporal_split(data, valid=0.1, test=0.1)"
    valid = real("valid", valid, low=0.0, high=1.0, high_open=True, example=example)
    test = real("test", test, low=0.0, high=1.0, high_open=True, example=example)
    if valid + test >= 1:
        raise ValueError(
            f"valid + test must leave events to train on (below 1); got valid={valid}, "
            f"test={test}. For example: {example}"
        )
    count = len(data["user"])
    order = np.lexsort((np.arange(count), data["timestamp"]))
    place = np.empty(count, np.int64)
    place[order] = np.arange(count)
    first_test = count - round(test * count)
    first_valid = first_test - round(valid * count)
    return (
        data.take(place < first_valid),
        data.take((place >= first_valid) & (place < first_test)),
        data.take(place >= first_test),
    )


def concatenate(*parts: Interactions) -> Interactions:
    """The events of `parts` together, in order: e.g. `concatenate(train, valid)`, the
    history a user has when their test item comes (what the test ranking excludes, and what
    SASRec reads). The parts must share one id space (splits of one dataset do).

    **Example:**

    ```python
    data = zoo.data.synthetic_movielens(key=jax.random.key(0))
    train, valid, test = zoo.data.leave_one_out(data)
    assert len(zoo.data.concatenate(train, valid, test)["user"]) == len(data["user"])
    ```
    """
    if not parts or not all(isinstance(part, Interactions) for part in parts):
        raise TypeError(
            "parts must be zoo.data.Interactions, e.g. zoo.data.concatenate(train, valid); got "
            f"{[type(part).__name__ for part in parts]}."
        )
    first = parts[0]
    for part in parts[1:]:
        same = np.array_equal(part.user_ids, first.user_ids) and np.array_equal(
            part.item_ids, first.item_ids
        )
        if not same or set(part) != set(first):
            raise ValueError(
                "parts must share one id space and the same columns (splits of one dataset); "
                f"got columns {sorted(first)} and {sorted(part)}, or other raw ids."
            )
    arrays = {name: np.concatenate([part[name] for part in parts]) for name in first}
    return Interactions(arrays, user_ids=first.user_ids, item_ids=first.item_ids)
