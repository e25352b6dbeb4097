"""Ranking metrics from scores: full-catalogue top-K metrics, the sampled protocol, and AUC.

Ties are counted against the held-out item (pessimistic ranks): an item's rank is one plus
the number of *other* candidates scoring at least as high. A model that gives every item the
same score therefore ranks each held-out item last, never first.

Scores must be finite: a user (or case) whose scores hold NaN or `+inf` (or whose held-out item
scores `-inf`, i.e. was excluded) gets NaN metrics, never a figure. NaN carries into any mean
taken of them; `zoo.recsys.evaluate_ranking` and `evaluate_sampled` refuse such a model with a
`ValueError`.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, Integer

from .. import _checks
from .._custom_types import IntLike

Cutoffs = int | Sequence[IntLike]


def checked_cutoffs(k: Cutoffs) -> tuple[int, ...]:
    """`k` as a sorted tuple of distinct positive ints, or a `ValueError` naming `k`."""
    cutoffs = (k,) if _checks.is_int(k) else tuple(k) if _iterable(k) else ()
    if not cutoffs or any(not _checks.is_int(c) or c < 1 for c in cutoffs):
        raise ValueError(
            f"k must be a positive int or a sequence of them, e.g. k=(10, 20); got {k!r}."
        )
    return tuple(sorted({int(c) for c in cutoffs}))


def _unearned(scores: Float[Array, "rows candidates"], targets: Float[Array, "rows n"]):
    """Rows whose figures the scores cannot support: a NaN or `+inf` score (`-inf` only marks
    an excluded item), or a target scored `-inf` (excluded, so never ranked)."""
    broken = jnp.any(jnp.isnan(scores) | (scores == jnp.inf), axis=1)
    return broken | jnp.any(targets == -jnp.inf, axis=1)


def _nan_where(rows: Bool[Array, " rows"], metrics: dict[str, Array]) -> dict[str, Array]:
    return {name: jnp.where(rows, jnp.nan, value) for name, value in metrics.items()}


def checked_targets(targets, num_items: int) -> Array:
    """Host targets checked before JAX stores them (no wrapped id), then as a JAX array."""
    if isinstance(targets, jax.Array):
        return targets
    concrete = _checks.fits_int32("targets", targets)
    if concrete.size and (concrete.min() < -1 or concrete.max() >= num_items):
        raise ValueError(
            f"targets must be item ids in [0, num_items) = [0, {num_items}), padded with -1; "
            f"got {concrete.min()} to {concrete.max()}."
        )
    return jnp.asarray(concrete)


def _iterable(value) -> bool:
    return hasattr(value, "__iter__") and not isinstance(value, str | bytes)


def _ideal_dcg(relevant: Int[Array, " users"], k: int) -> Float[Array, " users"]:
    gains = jnp.cumsum(1.0 / jnp.log2(jnp.arange(2, k + 2, dtype=jnp.float32)))
    return gains[jnp.clip(relevant, 1, k) - 1]


def ranking_metrics(
    scores: Float[Array, "users items"],
    targets: Integer[ArrayLike, "users held_out"],
    *,
    k: Cutoffs = 10,
) -> dict[str, Float[Array, " users"]]:
    """Full-ranking metrics of each user: HR@K, recall@K, NDCG@K and MRR.

    **Arguments:**

    - `scores`: each user's score of every item; set the items that are not candidates (the
        user's training positives) to `-inf` first.
    - `targets`: each user's held-out items, padded with `-1` to a common width.
    - `k`: one cutoff or several.

    **Returns:**

    A dict of `(users,)` arrays: for each cutoff `K`, `"hr@K"` (1 if any held-out item ranks
    in the top K), `"recall@K"` (the share of held-out items in the top K), `"ndcg@K"` (binary
    gains `1 / log2(1 + rank)`, divided by the best possible for that many held-out items),
    and `"mrr"` (one over the rank of the best-ranked held-out item, no cutoff). Ranks are
    pessimistic: `1 +` the number of other candidates scoring at least as high. A user
    without held-out items gets zeros; one with a NaN or `+inf` score, or a held-out item
    scored `-inf`, gets NaN (see the module's note). Host `targets` outside `[-1, num_items)`
    or beyond int32 are a `ValueError`.

    Runs in `O(users x items)`: one top-(K+1) selection and one comparison pass, no sort.

    **Example:**

    ```{.python notest}
    # a fragment: model, users, rows, train_items and held_out are yours
    scores = model.embed_users(users) @ model.embed_items(jnp.arange(n)).T
    scores = scores.at[rows, train_items].set(-jnp.inf)  # exclude training positives
    zoo.recsys.ranking_metrics(scores, held_out, k=(10, 20))["ndcg@10"].mean()
    ```
    """
    cutoffs = checked_cutoffs(k)
    num_items = scores.shape[1]
    targets = checked_targets(targets, num_items)
    valid = (targets >= 0) & (targets < num_items)
    target_scores = jnp.take_along_axis(scores, jnp.where(valid, targets, 0), axis=1)
    # Ranks up to max(K) are exact from the top max(K) + 1 scores; beyond, they read max(K) + 1.
    top = jax.lax.top_k(scores, min(cutoffs[-1] + 1, num_items))[0]
    ranks = jnp.sum(top[:, None, :] >= target_scores[:, :, None], axis=-1).astype(jnp.float32)
    relevant = jnp.sum(valid, axis=1)  # held-out items per user
    metrics = {}
    for cutoff in cutoffs:
        hits = valid & (ranks <= cutoff)
        gains = jnp.where(hits, 1.0 / jnp.log2(ranks + 1.0), 0.0)
        metrics[f"hr@{cutoff}"] = jnp.any(hits, axis=1).astype(jnp.float32)
        found = jnp.sum(hits, axis=1).astype(jnp.float32)
        metrics[f"recall@{cutoff}"] = found / jnp.maximum(relevant, 1).astype(jnp.float32)
        metrics[f"ndcg@{cutoff}"] = jnp.sum(gains, axis=1) / _ideal_dcg(relevant, cutoff)
    best = jnp.max(jnp.where(valid, target_scores, -jnp.inf), axis=1)
    first_rank = jnp.sum(scores >= best[:, None], axis=1).astype(jnp.float32)
    metrics["mrr"] = jnp.where(relevant > 0, 1.0 / jnp.maximum(first_rank, 1.0), 0.0)
    unearned = _unearned(scores, jnp.where(valid, target_scores, 0.0))
    return _nan_where(unearned, metrics)


def sampled_metrics(
    scores: Float[Array, "cases candidates"], *, k: Cutoffs = 10
) -> dict[str, Float[Array, " cases"]]:
    """The sampled protocol of the NCF paper: one held-out item ranked among sampled negatives.

    **Arguments:**

    - `scores`: per case, the held-out item's score in column 0 and its sampled negatives'
        (100 in the NCF paper) in the other columns.
    - `k`: one cutoff or several.

    **Returns:**

    A dict of `(cases,)` arrays: `"hr@K"`, `"ndcg@K"` for each cutoff, `"mrr"`, and `"auc"`
    (the share of negatives scored below the held-out item, ties counting half). Ranks are
    pessimistic, as in `ranking_metrics`; a case with a non-finite score gets NaN.
    """
    cutoffs = checked_cutoffs(k)
    held_out, negatives = scores[:, :1], scores[:, 1:]
    ranks = 1.0 + jnp.sum(negatives >= held_out, axis=1).astype(jnp.float32)
    metrics = {}
    for cutoff in cutoffs:
        hits = ranks <= cutoff
        metrics[f"hr@{cutoff}"] = hits.astype(jnp.float32)
        metrics[f"ndcg@{cutoff}"] = jnp.where(hits, 1.0 / jnp.log2(ranks + 1.0), 0.0)
    metrics["mrr"] = 1.0 / ranks
    wins = (held_out > negatives).astype(jnp.float32) + 0.5 * (held_out == negatives).astype(
        jnp.float32
    )
    metrics["auc"] = jnp.mean(wins, axis=1)
    return _nan_where(_unearned(scores, held_out), metrics)


def auc(
    scores: Float[Array, " n"], labels: Bool[ArrayLike, " n"] | Integer[ArrayLike, " n"]
) -> Float[Array, ""]:
    """The area under the ROC curve of a pointwise model: the probability that a random
    positive scores above a random negative, ties counting half.

    **Arguments:**

    - `scores`: one score per example (logits or probabilities; only the order matters).
    - `labels`: 1 (or True) for positives, 0 for negatives.

    **Returns:**

    The AUC, a scalar in [0, 1]; NaN without positives or without negatives, or when a
    score is not finite (NaN or infinite).

    **Example:**

    ```{.python notest}
    # a fragment: a pointwise model and test data with clicks
    logits = jax.vmap(model)(test["user"], test["item"])
    zoo.recsys.auc(logits, test["clicked"])
    ```
    """
    if not isinstance(labels, jax.Array):
        concrete = np.asarray(labels)
        if concrete.size and not np.isin(concrete, (0, 1)).all():
            raise ValueError(
                "labels must be 1 (or True) for positives and 0 for negatives; got values "
                f"{np.unique(concrete)[:5].tolist()}. For example labels=clicked.astype(bool)."
            )
    positive = jnp.asarray(labels).astype(bool)
    ordered = jnp.sort(scores)
    # The mean 1-based rank of each score among equal scores: ties share their ranks.
    below = jnp.searchsorted(ordered, scores, side="left")
    not_above = jnp.searchsorted(ordered, scores, side="right")
    ranks = (below + not_above + 1).astype(jnp.float32) / 2.0
    num_positive = jnp.sum(positive).astype(jnp.float32)
    num_negative = scores.shape[0] - num_positive
    rank_sum = jnp.sum(jnp.where(positive, ranks, 0.0))
    value = (rank_sum - num_positive * (num_positive + 1) / 2) / (num_positive * num_negative)
    return jnp.where(jnp.all(jnp.isfinite(scores)), value, jnp.nan)
