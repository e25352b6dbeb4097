"""Synthetic implicit feedback with a known structure: planted low-rank taste plus popularity."""

import jax
import numpy as np
from jaxtyping import Float32, Integer, PRNGKeyArray

from .. import _checks
from .._custom_types import IntLike, RealLike
from ._interactions import Interactions

_USERS_PER_CHUNK = 256  # bounds memory: one chunk holds (users, num_items) logits


def synthetic_interactions(
    num_users: IntLike = 2000,
    num_items: IntLike = 1000,
    *,
    interactions_per_user: IntLike = 20,
    rank: IntLike = 8,
    signal: RealLike = 3.0,
    popularity: RealLike = 1.0,
    key: PRNGKeyArray,
) -> Interactions:
    """Implicit feedback drawn from planted low-rank user and item factors plus popularity skew.

    Each user `u` and item `i` get factors `p_u, q_i ~ N(0, I_rank)`, and each item a
    popularity bias `-popularity * log(1 + r_i)`, `r_i` its place in a random order of the
    items (Zipf-like: the item at place `r` is `(1 + r) ** popularity` times rarer than the
    first). Each user then picks `interactions_per_user` distinct items with probabilities
    proportional to `exp(signal * p_u . q_i / sqrt(rank) + bias_i)` (sampling without
    replacement, by Gumbel top-k), in a random order recorded as `"timestamp"`.

    A model that learns the factors beats the popularity baseline by a wide margin, and one
    that learns nothing ranks like the random baseline: a quick, offline check of a
    recommender. It is the default dataset of `zoo train recommender`.

    **Arguments:**

    - `num_users`, `num_items`: the sizes of the id spaces.
    - `interactions_per_user`: how many distinct items each user picks (`<= num_items`).
    - `rank`: the dimension of the planted factors.
    - `signal`: the scale of the planted affinity; 0 leaves popularity alone.
    - `popularity`: the skew of item popularity; 0 makes every item equally popular a priori.
    - `key`: a `jax.random` key; the same key gives the same data.

    **Returns:**

    An [`Interactions`][zoo.data.Interactions] of `num_users * interactions_per_user` events,
    grouped by user: `"user"`, `"item"` (int32) and `"timestamp"` (int64, each user's events
    numbered `0, 1, ...` in the order they happened). Ids are their own raw ids.

    **Example:**

    ```python
    data = zoo.data.synthetic_interactions(2000, 1000, key=jax.random.key(0))
    train, test = zoo.data.leave_last_out(data)
    ```
    """
    example = "zoo.data.synthetic_interactions(2000, 1000, interactions_per_user=20, key=key)"
    sizes = {"num_users": num_users, "num_items": num_items, "rank": rank}
    _check_sizes(example, sizes, "interactions_per_user", interactions_per_user)
    # An infinite scale makes every probability NaN: no draw would follow the planted factors.
    signal = _checks.real("signal", signal, low=0.0, example=example)
    popularity = _checks.real("popularity", popularity, low=0.0, example=example)
    rng = _rng(key)
    users = rng.standard_normal((num_users, rank), np.float32) / np.float32(np.sqrt(rank))
    items = signal * rng.standard_normal((num_items, rank), np.float32)
    bias = (-popularity * np.log1p(rng.permutation(num_items))).astype(np.float32)
    picked = np.concatenate(
        [
            _pick(users[start : start + _USERS_PER_CHUNK], items, bias, interactions_per_user, rng)
            for start in range(0, num_users, _USERS_PER_CHUNK)
        ]
    )
    # Each user's picks in a random order of time (the pick order itself favours likely items).
    order = rng.permuted(np.tile(np.arange(interactions_per_user), (num_users, 1)), axis=1)
    arrays = {
        "user": np.repeat(np.arange(num_users, dtype=np.int32), interactions_per_user),
        "item": picked.astype(np.int32).ravel(),
        "timestamp": order.astype(np.int64).ravel(),
    }
    return Interactions(arrays, user_ids=np.arange(num_users), item_ids=np.arange(num_items))


def _pick(
    users: Float32[np.ndarray, "users rank"],
    items: Float32[np.ndarray, "items rank"],
    bias: Float32[np.ndarray, " items"],
    count: IntLike,
    rng: np.random.Generator,
) -> Integer[np.ndarray, "users count"]:
    """`count` distinct items per user, drawn without replacement by Gumbel top-k."""
    return _gumbel_top_k(users @ items.T + bias, count, rng)


def _gumbel_top_k(
    logits: Float32[np.ndarray, "users items"], count: IntLike, rng: np.random.Generator
) -> Integer[np.ndarray, "users count"]:
    """`count` distinct columns per row, drawn with probabilities `softmax(logits)` without
    replacement (a logit of -inf is never drawn)."""
    uniform = rng.random(logits.shape, np.float32)
    with np.errstate(divide="ignore"):  # a uniform of 0 gives a Gumbel of -inf: never picked
        gumbel = -np.log(-np.log(uniform))
    return np.argpartition(-(logits + gumbel), count - 1, axis=1)[:, :count]


def _rng(key: PRNGKeyArray) -> np.random.Generator:
    """NumPy, seeded by the key's bits: the same key gives the same data, with nothing to
    compile."""
    _checks.key("key", key, example="zoo.data.synthetic_interactions(2000, 1000, key=key)")
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def _check_sizes(example: str, sizes: dict, per_user: str, count) -> None:
    """Positive ints, and `count` (each user's distinct items, named `per_user`) at most
    `num_items`."""
    for name, value in {**sizes, per_user: count}.items():
        _checks.positive_int(name, value, example=example)
    if count > sizes["num_items"]:
        raise ValueError(
            f"{per_user}={count} exceeds num_items={sizes['num_items']}: each user picks "
            f"distinct items. Example: {example}"
        )


def synthetic_sequences(
    num_users: IntLike = 2000,
    num_items: IntLike = 1000,
    *,
    length: IntLike = 20,
    successors: IntLike = 3,
    order: RealLike = 0.8,
    popularity: RealLike = 1.0,
    key: PRNGKeyArray,
) -> Interactions:
    """Implicit feedback whose order matters: each user walks a planted graph of successors.

    Every item gets `successors` planted successor items, drawn uniformly. A user's first item
    is drawn by popularity (the Zipf-like skew of
    [`synthetic_interactions`][zoo.data.synthetic_interactions]); each next one is, with
    probability `order`, a uniformly chosen successor of the previous item, and otherwise (or
    when that successor was already picked) an item drawn by popularity among those the user
    has not picked. Users never repeat an item.

    The next item is predictable from the previous one and hardly from the set of a user's
    items: a sequential model (`zoo.SASRec`) ranks the held-out last item far above an
    order-blind one (`zoo.MatrixFactorization`) and the popularity baseline. The default data
    of `zoo train recommender --model sasrec`.

    **Arguments:**

    - `num_users`, `num_items`: the sizes of the id spaces.
    - `length`: the events per user (`<= num_items`).
    - `successors`: the planted successors of each item.
    - `order`: the probability of stepping to a successor, in [0, 1]; 0 gives no order at all.
    - `popularity`: the skew of the other draws; 0 makes them uniform.
    - `key`: a `jax.random` key; the same key gives the same data.

    **Returns:**

    An [`Interactions`][zoo.data.Interactions] of `num_users * length` events, grouped by
    user in time order: `"user"`, `"item"` (int32) and `"timestamp"` (int64, `0, 1, ...`).

    **Example:**

    ```python
    data = zoo.data.synthetic_sequences(2000, 1000, key=jax.random.key(0))
    train, test = zoo.data.leave_last_out(data)
    rows = zoo.data.sequences(train, max_len=50)
    ```
    """
    example = "zoo.data.synthetic_sequences(2000, 1000, length=20, key=key)"
    sizes = {"num_users": num_users, "num_items": num_items, "successors": successors}
    _check_sizes(example, sizes, "length", length)
    order = _checks.real("order", order, low=0.0, high=1.0, example=example)
    popularity = _checks.real("popularity", popularity, low=0.0, example=example)
    rng = _rng(key)
    bias = (-popularity * np.log1p(rng.permutation(num_items))).astype(np.float32)
    planted = rng.integers(0, num_items, (num_items, successors))
    everyone = np.arange(num_users)
    picked = np.zeros((num_users, num_items), bool)
    walk = np.empty((num_users, length), np.int64)
    for step in range(length):
        drawn = _gumbel_top_k(np.where(picked, -np.inf, bias), 1, rng)[:, 0]
        if step:
            successor = planted[walk[:, step - 1], rng.integers(0, successors, num_users)]
            follow = (rng.random(num_users) < order) & ~picked[everyone, successor]
            drawn = np.where(follow, successor, drawn)
        walk[:, step] = drawn
        picked[everyone, drawn] = True
    arrays = {
        "user": np.repeat(np.arange(num_users, dtype=np.int32), length),
        "item": walk.astype(np.int32).ravel(),
        "timestamp": np.tile(np.arange(length, dtype=np.int64), num_users),
    }
    return Interactions(arrays, user_ids=np.arange(num_users), item_ids=np.arange(num_items))


# MovieLens-100K's shape: its sizes, its first timestamp, and per-user lengths from 20 (its
# minimum) to 700 (it has 737) with a median near 65 and a mean near 106.
_ML100K_USERS, _ML100K_ITEMS, _ML100K_START = 943, 1682, 874_724_710
_LENGTH_MIN, _LENGTH_MAX, _LENGTH_MEDIAN, _LENGTH_SPREAD = 20, 700, 50.0, 1.14


def synthetic_movielens(
    *,
    order: RealLike = 0.5,
    signal: RealLike = 4.0,
    disliked: RealLike = 0.15,
    repeats: RealLike = 0.01,
    key: PRNGKeyArray,
) -> Interactions:
    """A stand-in for MovieLens-100K: its shape, with planted taste and planted order.

    943 users and 1682 items (raw ids `1..943` and `1..1682`, as in `u.data`), about 100,000
    rated events. Each user gets a length from 20 to 700 (log-normal, median about 65, mean
    about 106, like ML-100K's), a start time within seven months and exponential gaps between
    events. Their liked items (rated 4 or 5) are a walk: the first is drawn by taste, each
    next one is, with probability `order`, one of the previous item's three planted
    successors, and otherwise drawn by taste, `exp(signal * p_u . q_i / sqrt(8) + bias_i)` with
    rank-8 factors `p_u, q_i` and a Zipf-like popularity bias (item popularity has a long
    tail). A share `disliked` of each user's events are items drawn by popularity alone and
    rated 1 to 3, at random times among the liked ones; a share `repeats` of the liked events
    are re-watches of an item the user liked before (rated again, later).

    So a sequential model ([`zoo.SASRec`][]) beats the popularity baseline by far (the next
    item follows from the previous one), and order-blind ones ([`zoo.MatrixFactorization`][],
    [`zoo.TwoTower`][], [`zoo.recsys.DLRMRecommender`][]) beat it by learning each user's
    taste. `zoo train recommender`'s defaults are tuned on it.

    **Arguments:**

    - `order`: the probability of stepping to a successor of the previous liked item.
    - `signal`: the scale of the planted taste; 0 leaves popularity alone.
    - `disliked`: the share of events rated 1 to 3 (dropped by `rating_threshold(data, 4)`).
    - `repeats`: the share of liked events that repeat an earlier liked item of the user.
    - `key`: a `jax.random` key; the same key gives the same data.

    **Returns:**

    An [`Interactions`][zoo.data.Interactions] in time order with `"user"`, `"item"`
    (int32), `"rating"` (float32, whole stars 1 to 5) and `"timestamp"` (int64 seconds, from
    ML-100K's first one).

    **Example:**

    ```python
    data = zoo.data.synthetic_movielens(key=jax.random.key(0))
    print(data)  # Interactions(~100000 events, 943 users, 1682 items; ...)
    ```
    """
    example = "zoo.data.synthetic_movielens(order=0.5, key=jax.random.key(0))"
    order = _checks.real("order", order, low=0.0, high=1.0, example=example)
    signal = _checks.real("signal", signal, low=0.0, example=example)
    disliked = _checks.real("disliked", disliked, low=0.0, high=0.9, example=example)
    repeats = _checks.real("repeats", repeats, low=0.0, high=0.5, example=example)
    rng = _rng(key)
    num_users, num_items, rank = _ML100K_USERS, _ML100K_ITEMS, 8
    lengths = np.clip(
        _LENGTH_MIN + rng.lognormal(np.log(_LENGTH_MEDIAN), _LENGTH_SPREAD, num_users),
        _LENGTH_MIN,
        _LENGTH_MAX,
    ).astype(np.int64)
    low = rng.binomial(lengths, disliked)
    liked = _liked_walks(rng, lengths - low, order, signal, rank, num_items)
    liked = _with_repeats(rng, liked, repeats)
    bias = (-np.log1p(rng.permutation(num_items))).astype(np.float32)
    events = []
    for user, walk in enumerate(liked):
        shown = np.zeros(num_items, bool)
        shown[walk] = True
        logits = np.where(shown, -np.inf, bias)[None]
        dull = _gumbel_top_k(logits, low[user], rng)[0] if low[user] else np.zeros(0, int)
        items = np.concatenate([walk, dull])
        ratings = np.concatenate([rng.integers(4, 6, len(walk)), rng.integers(1, 4, len(dull))])
        # The liked walk keeps its order; disliked events fall at random places within it.
        place = np.concatenate([np.arange(len(walk)), rng.uniform(-0.5, len(walk), len(dull))])
        sequence = np.argsort(place, kind="stable")
        events.append((np.full(len(items), user), items[sequence], ratings[sequence]))
    users, items, ratings = (np.concatenate(column) for column in zip(*events, strict=True))
    start = rng.uniform(0, 1.8e7, num_users)[users]  # about seven months
    gaps = rng.exponential(3600.0, len(users))
    first = np.r_[True, users[1:] != users[:-1]]
    clock = np.cumsum(gaps) - np.maximum.accumulate(np.where(first, np.cumsum(gaps), 0.0))
    timestamps = (_ML100K_START + start + clock).astype(np.int64)
    by_time = np.argsort(timestamps, kind="stable")
    arrays = {
        "user": users[by_time].astype(np.int32),
        "item": items[by_time].astype(np.int32),
        "rating": ratings[by_time].astype(np.float32),
        "timestamp": timestamps[by_time],
    }
    return Interactions(
        arrays, user_ids=np.arange(1, num_users + 1), item_ids=np.arange(1, num_items + 1)
    )


def _liked_walks(rng, lengths, order, signal, rank, num_items) -> list[np.ndarray]:
    """Each user's liked items: a walk of planted successors, else draws by taste."""
    num_users = len(lengths)
    users = rng.standard_normal((num_users, rank), np.float32) / np.float32(np.sqrt(rank))
    items = np.float32(signal) * rng.standard_normal((num_items, rank), np.float32)
    bias = (-np.log1p(rng.permutation(num_items))).astype(np.float32)
    logits = users @ items.T + bias
    planted = rng.integers(0, num_items, (num_items, 3))
    picked = np.zeros((num_users, num_items), bool)
    walk = np.full((num_users, int(lengths.max())), -1, np.int64)
    for step in range(walk.shape[1]):
        active = np.flatnonzero(lengths > step)
        drawn = _gumbel_top_k(np.where(picked[active], -np.inf, logits[active]), 1, rng)[:, 0]
        if step:
            previous = walk[active, step - 1]
            successor = planted[previous, rng.integers(0, 3, len(active))]
            follow = (rng.random(len(active)) < order) & ~picked[active, successor]
            drawn = np.where(follow, successor, drawn)
        walk[active, step] = drawn
        picked[active, drawn] = True
    return [walk[user, : lengths[user]] for user in range(num_users)]


def _with_repeats(rng, walks: list[np.ndarray], share: float) -> list[np.ndarray]:
    """Each walk with a `share` of its events (after the first) replaced by an earlier item."""
    out = []
    for walk in walks:
        walk = walk.copy()
        places = np.flatnonzero(rng.random(len(walk)) < share)
        places = places[places > 0]
        walk[places] = walk[(rng.random(len(places)) * places).astype(np.int64)]
        out.append(walk)
    return out
