"""Ranking evaluation over a whole split, in batches of users under one `jit`, with baselines."""

from collections.abc import Mapping
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int, PRNGKeyArray

from .. import _checks
from .._custom_types import IntLike
from ._baselines import Popularity, RandomScores
from ._factorized import is_factorized
from ._losses import pair_scores
from ._metrics import Cutoffs, checked_cutoffs, ranking_metrics, sampled_metrics
from ._sampling import NegativeSampler


class Report(dict):
    """`{"model": metrics, "popularity": metrics, "random": metrics}`, with what was measured.

    A dict of each scorer's figures (Python floats), and three attributes: `protocol`, the
    evaluation protocol in words (every printed report names it: full and sampled rankings
    give figures that cannot be compared); `users`, how many users (or cases) the figures
    average over; and `dropped`, how many held-out users were left out and why
    (`{"not in train": n, "nothing to rank against": m}`).
    """

    def __init__(self, figures: dict, *, protocol: str, users: int, dropped: dict[str, int]):
        super().__init__(figures)
        self.protocol = protocol
        self.users = users
        self.dropped = dropped

    def describe(self) -> str:
        """The protocol, the users counted and those dropped, in one line."""
        dropped = ", ".join(f"{n} {why}" for why, n in self.dropped.items() if n)
        return f"{self.protocol}; {self.users} evaluated" + (
            f" ({dropped}: dropped)" if dropped else ""
        )


_SCORES_PER_BATCH = 2**20  # users per batch times num_items: bounds the memory of a batch


class _Batches(NamedTuple):
    """Per-batch arrays, stacked on a leading batch axis for `jax.lax.map`."""

    users: Int[Array, "batches size"]
    valid: Bool[Array, "batches size"]
    targets: Int[Array, "batches size held_out"]  # full ranking: held-out items, -1 padded
    excluded_rows: Int[Array, "batches excluded"]  # full ranking: row in the batch, or `size`
    excluded_items: Int[Array, "batches excluded"]


def _padded_groups(groups: np.ndarray, values: np.ndarray, num_groups: int, pad) -> np.ndarray:
    """`(num_groups, width)`: row `g` holds the `values` whose group is `g`, then `pad`."""
    order = np.argsort(groups, kind="stable")
    grouped = groups[order]
    slots = np.arange(len(grouped)) - np.searchsorted(grouped, grouped)
    out = np.full((num_groups, int(slots.max(initial=0)) + 1), pad, np.int32)
    out[grouped, slots] = values[order]
    return out


def _column(data: Mapping[str, np.ndarray], name: str, argument: str) -> np.ndarray:
    if not isinstance(data, Mapping) or name not in data:
        raise ValueError(
            f"{argument} must be interactions with 'user' and 'item' columns, such as a split from "
            f"zoo.data.leave_last_out(data); got {type(data).__name__} without {name!r}."
        )
    column = _checks.fits_int32(f"{argument}[{name!r}]", data[name])
    if not np.issubdtype(column.dtype, np.integer):
        raise TypeError(
            f"{argument}[{name!r}] must hold integer indices; got {column.dtype}. Split with "
            "zoo.data.leave_last_out(data), whose columns are int32."
        )
    return column.astype(np.int64)


def _checked_splits(train, test, num_items: int, num_users) -> tuple[np.ndarray, ...]:
    train_users, train_items = (_column(train, c, "train") for c in ("user", "item"))
    test_users, test_items = (_column(test, c, "test") for c in ("user", "item"))
    for name, users in (("train", train_users), ("test", test_users)):
        if num_users is not None and users.size and (users.min() < 0 or users.max() >= num_users):
            raise ValueError(
                f"{name} users must lie in [0, model.num_users) = [0, {num_users}); got "
                f"{users.min()} to {users.max()}."
            )
    if len(test_users) == 0:
        raise ValueError("test holds no interactions: there is nothing to rank.")
    for name, items in (("train", train_items), ("test", test_items)):
        if items.size and (items.min() < 0 or items.max() >= num_items):
            raise ValueError(
                f"{name} items must lie in [0, model.num_items) = [0, {num_items}); got "
                f"{items.min()} to {items.max()}."
            )
    return train_users, train_items, test_users, test_items


class _Held(NamedTuple):
    """Held-out pairs (distinct), the pairs the ranking excludes, and the users dropped."""

    users: np.ndarray  # the users evaluated, sorted
    test_users: np.ndarray  # their held-out pairs, each once
    test_items: np.ndarray
    excluded_users: np.ndarray  # their excluded pairs
    excluded_items: np.ndarray
    dropped: dict[str, int]


def _held_out(train, test, num_items: int, num_users, exclude: str, least_others: int) -> _Held:
    """The protocol: each held-out (user, item) pair counts once; a user's training items are
    excluded from the candidates except the held-out ones (repeat consumption is a legal
    target); users without training events, or left with fewer than `least_others`
    candidates besides their held-out items (any ranking would hit), are dropped and counted."""
    train_users, train_items, test_users, test_items = _checked_splits(
        train, test, num_items, num_users
    )
    held = np.unique(test_users * num_items + test_items)
    seen = np.unique(train_users * num_items + train_items)
    excluded = seen[~np.isin(seen, held)] if exclude == "train" else seen[:0]
    users = np.unique(held // num_items)
    known = np.isin(users, train_users)
    size = max(int(users.max(initial=0)) + 1, 1)
    others = (
        num_items
        - np.bincount(excluded // num_items, minlength=size)[users]
        - np.bincount(held // num_items, minlength=size)[users]
    )
    enough = others >= least_others
    kept = users[known & enough]
    if len(kept) == 0:
        raise ValueError(
            f"test leaves no user to evaluate: {int((~known).sum())} held-out users have no "
            f"training events and {int((known & ~enough).sum())} have fewer than "
            f"{least_others} candidate items besides their held-out ones. Split so that each "
            "held-out user has a history, e.g. zoo.data.leave_one_out(data)."
        )
    held, excluded = (
        held[np.isin(held // num_items, kept)],
        excluded[np.isin(excluded // num_items, kept)],
    )
    return _Held(
        users=kept,
        test_users=held // num_items,
        test_items=held % num_items,
        excluded_users=excluded // num_items,
        excluded_items=excluded % num_items,
        dropped={
            "not in train": int((~known).sum()),
            "nothing to rank against": int((known & ~enough).sum()),
        },
    )


def _user_batches(held: _Held, size: int) -> _Batches:
    """The users with held-out items, in batches of `size`, with their targets and exclusions."""
    users = held.users
    num_batches = -(-len(users) // size)
    padded = np.zeros(num_batches * size, np.int32)
    padded[: len(users)] = users
    targets = _padded_groups(
        np.searchsorted(users, held.test_users), held.test_items, len(padded), -1
    )
    position = np.searchsorted(users, held.excluded_users)
    batch_of = position // size
    return _Batches(
        users=padded.reshape(num_batches, size),
        valid=(np.arange(len(padded)) < len(users)).reshape(num_batches, size),
        targets=targets.reshape(num_batches, size, -1),
        excluded_rows=_padded_groups(batch_of, position % size, num_batches, size),
        excluded_items=_padded_groups(batch_of, held.excluded_items, num_batches, 0),
    )


def _case_batches(held: _Held, size: int) -> _Batches:
    """Every held-out (user, item) pair as a case, in batches of `size`."""
    users, items = held.test_users, held.test_items
    num_batches = -(-len(users) // size)
    padded = np.zeros((2, num_batches * size), np.int32)
    padded[:, : len(users)] = users, items
    shape = (num_batches, size)
    empty = np.zeros((num_batches, 0), np.int32)
    return _Batches(
        users=padded[0].reshape(shape),
        valid=(np.arange(padded.shape[1]) < len(users)).reshape(shape),
        targets=padded[1].reshape(*shape, 1),
        excluded_rows=empty,
        excluded_items=empty,
    )


def _catalogue_scorer(model, num_items: int):
    """`scores(users) -> (users, num_items)`; item vectors computed once for factorised models."""
    items = jnp.arange(num_items)
    if is_factorized(model):
        item_vectors = model.embed_items(items)
        return lambda users: model.embed_users(users) @ item_vectors.T
    return lambda users: pair_scores(model, users, jnp.broadcast_to(items, (len(users), num_items)))


_UNEARNED = "unearned"  # how many cases had non-finite scores (their metrics are NaN)


def _masked_sums(metrics: dict[str, Array], valid: Bool[Array, " size"]) -> dict[str, Array]:
    sums = {name: jnp.sum(jnp.where(valid, value, 0.0)) for name, value in metrics.items()}
    return sums | {_UNEARNED: jnp.sum(valid & jnp.isnan(metrics["mrr"]))}


@eqx.filter_jit
def _full_sums(model, batches: _Batches, num_items: int, cutoffs: tuple[int, ...]):
    scores_of = _catalogue_scorer(model, num_items)

    def one_batch(batch: _Batches):
        scores = scores_of(batch.users)
        # Training positives are not candidates; padding rows (== size) are dropped.
        scores = scores.at[batch.excluded_rows, batch.excluded_items].set(-jnp.inf, mode="drop")
        return _masked_sums(ranking_metrics(scores, batch.targets, k=cutoffs), batch.valid)

    return jax.tree.map(jnp.sum, jax.lax.map(one_batch, batches))


@eqx.filter_jit
def _sampled_sums(model, sampler, batches: _Batches, num_negatives, cutoffs, key):
    def one_batch(inputs):
        batch, index = inputs
        negatives = sampler(jax.random.fold_in(key, index), batch.users, num_negatives)
        candidates = jnp.concatenate([batch.targets, negatives], axis=1)  # held-out first
        scores = pair_scores(model, batch.users, candidates)
        return _masked_sums(sampled_metrics(scores, k=cutoffs), batch.valid)

    indices = jnp.arange(batches.users.shape[0])
    return jax.tree.map(jnp.sum, jax.lax.map(one_batch, (batches, indices)))


_KEY_EXAMPLE = "zoo.recsys.evaluate_ranking(model, train, test, key=jax.random.key(0))"


def _num_items(model, train=None) -> int:
    """The model's catalogue size, which must be that of the data's id space: a model with
    more items (a padding row counted as an item, say) would rank items that do not exist."""
    num_items = getattr(model, "num_items", None)
    if not _checks.is_int(num_items):
        raise TypeError(
            "model must be a recommender scoring model(user, item) with a num_items attribute "
            f"(zoo.MatrixFactorization, zoo.TwoTower, zoo.recsys.DLRMRecommender, ...); got "
            f"{type(model).__name__}."
        )
    data_items = getattr(train, "num_items", None)
    if data_items is not None and data_items != num_items:
        raise ValueError(
            f"model.num_items must be the data's catalogue size, train.num_items={data_items}; "
            f"got {num_items}. Build the model from the data, e.g. "
            "zoo.SASRec(num_items=train.num_items, ...) (its padding id is added by the model)."
        )
    return int(num_items)


def _num_users(model) -> int | None:
    """The model's user count where it has one (a sequential model has none: any user with a
    history in train can be scored)."""
    num_users = getattr(model, "num_users", None)
    return num_users if isinstance(num_users, int) and not isinstance(num_users, bool) else None


def _batch_size(batch_size: int | None, num_items: int) -> int:
    if batch_size is None:
        return int(np.clip(_SCORES_PER_BATCH // num_items, 1, 4096))
    return _checks.positive_int(
        "batch_size", batch_size, example="zoo.recsys.evaluate_ranking(..., batch_size=256)"
    )


def _models(model, train, num_items: int, baselines: bool, key: PRNGKeyArray) -> dict:
    # A sequential model (zoo.SASRec) scores a user from their history: bind it to `train`.
    ranker = getattr(model, "ranker", None)
    models = {"model": model if ranker is None else ranker(train)}
    if baselines:
        models["popularity"] = Popularity(train, num_items)
        models["random"] = RandomScores(num_items, key=jax.random.fold_in(key, 1))
    return models


_METRIC_ORDER = ("hr", "ndcg", "recall", "mrr", "auc")


def _averages(sums: dict[str, Array], count: int, model: str, cases: str) -> dict[str, float]:
    """Averages in reading order, `hr@10, ndcg@10, recall@10, ..., mrr` (pytrees sort keys);
    a `ValueError` when some case's scores were not finite (never a figure made of them)."""
    sums = dict(sums)
    unearned = int(sums.pop(_UNEARNED))
    if unearned:
        raise ValueError(
            f"{model} scores must be finite; {unearned} of {count} {cases} got NaN or infinite "
            "scores, so no figure can be reported. Check the model for NaN parameters (a "
            "diverged training run) before evaluating it."
        )

    def place(name: str) -> tuple[bool, int, int]:
        kind, _, cutoff = name.partition("@")
        return not cutoff, int(cutoff or 0), _METRIC_ORDER.index(kind)

    return {name: float(sums[name]) / count for name in sorted(sums, key=place)}


def evaluate_ranking(
    model,
    train: Mapping[str, np.ndarray],
    test: Mapping[str, np.ndarray],
    *,
    k: Cutoffs = 10,
    batch_size: IntLike | None = None,
    baselines: bool = True,
    exclude: str = "train",
    key: PRNGKeyArray | None = None,
) -> Report:
    """Full-catalogue ranking metrics of `model` on held-out interactions, with baselines.

    For each user with held-out items, every item of the catalogue is scored, the user's
    training items are removed from the candidates, and the held-out items are located in
    the ranking: HR@K, recall@K, NDCG@K and MRR (see `zoo.recsys.ranking_metrics`; ties count
    against the held-out item), averaged over users.

    **The protocol, exactly.** Each distinct held-out `(user, item)` pair counts once (a
    repeated event is not a second target). A held-out item that the user also has in `train`
    (repeat consumption) stays a candidate: only the user's *other* training items are
    excluded (`exclude="none"` excludes nothing). A held-out user without training events (no
    history to rank from), or left with fewer than `max(k)` candidates besides their held-out
    items (any ranking would hit), is dropped and counted in `report.dropped`; if no user is
    left, a `ValueError`. So no report shows a random baseline at HR@10 = 1.

    **Memory.** Users are ranked in chunks of `batch_size` (about a million scores each), so
    the peak is the events plus one chunk's scores, whatever the number of users: 138,000
    users by 27,000 items (MovieLens-20M's size) peak at the figure given in the
    [recommenders guide](../recommenders.md#full-ranking-memory).

    The popularity and random baselines are evaluated the same way in the same call, so that
    every report shows the lift.

    Users are scored in batches inside one compiled program. A factorised model (one with
    `embed_users` and `embed_items`, such as `zoo.MatrixFactorization` and `zoo.TwoTower`)
    embeds the catalogue once and scores a batch with one matrix product: 10,000 users by
    10,000 items take half a second on two CPU cores, once compiled. Other models
    (`zoo.recsys.DLRMRecommender`) are called on every (user, item) pair, which costs a
    forward pass per pair.

    **Arguments:**

    - `model`: a recommender with a `num_items` attribute, scoring `model(user, item)`, or a
        sequential one (`zoo.SASRec`), scored from each user's history in `train`.
    - `train`: the training interactions (`"user"`, `"item"`), excluded from the candidates.
    - `test`: the held-out interactions; each user's held-out items are ranked together.
    - `k`: one cutoff or several, e.g. `(10, 20)`.
    - `batch_size`: users per batch; by default about a million scores per batch.
    - `baselines`: also evaluate `zoo.recsys.Popularity` (from `train`) and
        `zoo.recsys.RandomScores`.
    - `exclude`: `"train"` (each user's training items other than the held-out ones are not
        candidates) or `"none"`.
    - `key`: the random baseline's key; default `jax.random.key(0)`.

    **Returns:**

    A [`Report`][zoo.recsys.Report]: `{"model": metrics, "popularity": metrics, "random":
    metrics}` (only `"model"` with `baselines=False`), each a dict such as `{"hr@10": 0.31,
    "recall@10": 0.31, "ndcg@10": 0.17, "mrr": 0.14}` of Python floats, with the `protocol`,
    the `users` counted and those `dropped`.

    **Example:**

    ```python
    data = zoo.data.synthetic_interactions(200, 100, key=jax.random.key(0))
    model = zoo.MatrixFactorization(data.num_users, data.num_items, key=jax.random.key(1))
    train, test = zoo.data.leave_last_out(data)
    report = zoo.recsys.evaluate_ranking(model, train, test, k=10)
    print(zoo.recsys.format_report(report))
    ```
    """
    num_items = _num_items(model, train)
    cutoffs = checked_cutoffs(k)
    key = jax.random.key(0) if key is None else _checks.key("key", key, example=_KEY_EXAMPLE)
    exclude = _checks.one_of("exclude", exclude, ("train", "none"))
    size = _batch_size(batch_size, num_items)
    held = _held_out(train, test, num_items, _num_users(model), exclude, cutoffs[-1])
    batches = jax.tree.map(jnp.asarray, _user_batches(held, size))
    count = len(held.users)
    excluded = "training items excluded" if exclude == "train" else "nothing excluded"
    protocol = (
        f"full ranking of all {num_items} items ({excluded}, held-out items kept as "
        "candidates), averaged over users"
    )
    figures = {
        name: _averages(_full_sums(scorer, batches, num_items, cutoffs), count, name, "users")
        for name, scorer in _models(model, train, num_items, baselines, key).items()
    }
    return Report(figures, protocol=protocol, users=count, dropped=held.dropped)


def evaluate_sampled(
    model,
    train: Mapping[str, np.ndarray],
    test: Mapping[str, np.ndarray],
    *,
    num_negatives: IntLike = 100,
    k: Cutoffs = 10,
    batch_size: IntLike = 1024,
    baselines: bool = True,
    negatives: str = "uniform",
    key: PRNGKeyArray | None = None,
) -> Report:
    """The sampled protocol of the NCF paper (He et al., 2017), with baselines.

    Each distinct held-out `(user, item)` pair is a case: `num_negatives` items the user has
    not interacted with (in `train` or `test`) are drawn, uniformly or in proportion to their
    popularity (RecBole's "pop" sampling), and the held-out item is ranked among them. Users
    without training events are dropped and counted, as in `evaluate_ranking`.
    Reports HR@K, NDCG@K, MRR and AUC (see `zoo.recsys.sampled_metrics`),
    averaged over cases. The numbers are far higher than under full ranking, and not
    comparable with them: prefer `evaluate_ranking`, and use this to compare with papers.

    **Arguments:**

    - `model`: a recommender with a `num_items` attribute, scoring `model(user, item)`, or a
        sequential one (`zoo.SASRec`), scored from each user's history in `train`.
    - `train`, `test`: the training and held-out interactions.
    - `num_negatives`: sampled negatives per case (100 in the paper).
    - `k`: one cutoff or several.
    - `batch_size`: cases per batch.
    - `baselines`: also evaluate the popularity and random baselines.
    - `negatives`: `"uniform"`, or `"popularity"`: each item drawn in proportion to its
        count in `train` and `test` (a draw that hits one of the user's items is drawn again,
        up to 8 times; see `zoo.recsys.NegativeSampler`). Popularity negatives are harder:
        the popularity baseline scores far lower against them.
    - `key`: draws the negatives (the same for every model of the report) and the random
        baseline; default `jax.random.key(0)`.

    **Returns:**

    A [`Report`][zoo.recsys.Report], `{"model": metrics, "popularity": metrics, "random":
    metrics}`, each a dict such as `{"hr@10": 0.65, "ndcg@10": 0.39, "mrr": 0.33, "auc":
    0.91}`, whose `protocol` names the sampling.

    **Example:**

    ```python
    data = zoo.data.synthetic_interactions(200, 100, key=jax.random.key(0))
    train, test = zoo.data.leave_last_out(data)
    model = zoo.MatrixFactorization(train.num_users, train.num_items, key=jax.random.key(1))
    # 100 items, 20 per user: 80 left to sample from each user, so fewer than NCF's 100
    zoo.recsys.evaluate_sampled(model, train, test, num_negatives=50, key=jax.random.key(0))
    ```
    """
    num_items = _num_items(model, train)
    cutoffs = checked_cutoffs(k)
    key = jax.random.key(0) if key is None else _checks.key("key", key, example=_KEY_EXAMPLE)
    num_negatives = _checks.positive_int("num_negatives", num_negatives, example=_SAMPLED_EXAMPLE)
    negatives = _checks.one_of("negatives", negatives, ("uniform", "popularity"))
    held = _held_out(train, test, num_items, _num_users(model), "train", 1)
    train_users, train_items = (_column(train, c, "train") for c in ("user", "item"))
    everything = {
        "user": np.concatenate([train_users, held.test_users]),
        "item": np.concatenate([train_items, held.test_items]),
    }
    sampler = NegativeSampler(
        num_items, distribution=negatives, interactions=everything, exclude_positives=True
    )
    _check_enough_negatives(sampler, held.test_users, num_negatives)
    batches = _case_batches(held, _batch_size(batch_size, num_items))
    count = len(held.test_users)
    batches = jax.tree.map(jnp.asarray, batches)
    figures = {
        name: _averages(
            _sampled_sums(scorer, sampler, batches, num_negatives, cutoffs, key),
            count,
            name,
            "held-out cases",
        )
        for name, scorer in _models(model, train, num_items, baselines, key).items()
    }
    protocol = (
        f"sampled ranking: each held-out item against {num_negatives} {negatives} negatives "
        "the user never had, averaged over held-out pairs"
    )
    return Report(figures, protocol=protocol, users=count, dropped=held.dropped)


_SAMPLED_EXAMPLE = "zoo.recsys.evaluate_sampled(model, train, test, num_negatives=100)"


def _check_enough_negatives(sampler: NegativeSampler, users: np.ndarray, num_negatives: int):
    """The protocol ranks each held-out item among `num_negatives` items the user never had:
    refused when some user has fewer such items than that."""
    positives = np.diff(np.asarray(sampler.indptr))[users]
    left = sampler.num_items - positives
    if left.min() < num_negatives:
        worst = int(np.argmin(left))
        raise ValueError(
            f"num_negatives must be at most the items each test user has not interacted with; "
            f"got {num_negatives}, but user {users[worst]} has only {left[worst]} of "
            f"num_items={sampler.num_items} left (the others are in train or test). Use "
            f"num_negatives <= {left.min()}, or evaluate_ranking (the whole catalogue)."
        )


def format_report(report: Report) -> str:
    """A report of `evaluate_ranking` or `evaluate_sampled` as a Markdown table, each figure of
    a model followed by its lift over the popularity baseline, under a line that names the
    protocol and the users counted (and dropped).

    **Example:**

    ```python
    data = zoo.data.synthetic_interactions(200, 100, key=jax.random.key(0))
    train, test = zoo.data.leave_last_out(data)
    model = zoo.MatrixFactorization(train.num_users, train.num_items, key=jax.random.key(1))
    print(zoo.recsys.format_report(zoo.recsys.evaluate_ranking(model, train, test)))
    # A Markdown table: a row for the model and each baseline, a column for each metric, and
    # beside each of the model's figures its lift over popularity, "(x2.41)" say.
    ```
    """
    names = list(next(iter(report.values())))
    reference = report.get("popularity")
    rows = [["", *names], ["---"] * (1 + len(names))]
    for model, metrics in report.items():
        cells = [f"{metrics[name]:.4f}" for name in names]
        if reference is not None and model not in ("popularity", "random"):
            cells = [
                f"{cell} (x{metrics[name] / reference[name]:.2f})" if reference[name] else cell
                for cell, name in zip(cells, names, strict=True)
            ]
        rows.append([model, *cells])
    widths = [max(len(row[j]) for row in rows) for j in range(len(rows[0]))]
    table = "\n".join(
        "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |"
        for row in rows
    )
    return f"{report.describe()}\n\n{table}" if isinstance(report, Report) else table
