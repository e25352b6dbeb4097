"""Training losses for recommenders: `loss(model, batch, key)` for `zoo.train`.

A batch holds positive interactions, `{"user": (b,), "item": (b,)}`. Negatives are sampled
inside the loss from the step's key (BPR, BCE) or taken from the batch itself (in-batch
softmax). Every table is read by calling its `Embedding` under `jax.vmap`, never through its
weight, so the losses train with `zoo.sparse` optimizers as well as with optax.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar

from .. import _checks
from .._custom_types import Batch, IntLike, LossFn
from ._factorized import is_factorized
from ._sampling import NegativeSampler


def pair_scores(model, users: Int[Array, " b"], items: Int[Array, "b m"]) -> Float[Array, "b m"]:
    """The scores of `m` items for each of `b` users, as the losses and evaluations compute them.

    Factorised models (with `embed_users` and `embed_items`) embed each user once and each item
    once; other models are called on every pair. Tables are read only by vmapped `Embedding`
    calls, so this works inside `zoo.sparse.value_and_grad`.

    **Arguments:**

    - `model`: a recommender scoring `model(user, item)`.
    - `users`: `(b,)` user indices.
    - `items`: `(b, m)` item indices: row `j` holds the items to score for `users[j]`.

    **Returns:**

    `(b, m)` scores, `scores[j, c] = model(users[j], items[j, c])`.
    """
    if is_factorized(model):
        user_vectors = model.embed_users(users)
        item_vectors = model.embed_items(items.reshape(-1)).reshape(*items.shape, -1)
        return jnp.einsum("bd,bmd->bm", user_vectors, item_vectors)
    per_user = jax.vmap(model, in_axes=(None, 0))
    return jax.vmap(per_user)(users, items)


def _positives(batch: Batch, loss: str) -> tuple[Int[Array, " b"], Int[Array, " b"]]:
    if "user" not in batch or "item" not in batch:
        raise ValueError(
            f"{loss} needs batches of positive interactions {{'user': ..., 'item': ...}}; "
            f"got keys {sorted(batch)}. Train on interactions such as "
            "zoo.data.leave_last_out(data)[0]."
        )
    return batch["user"], batch["item"]


def _checked_key(key: PRNGKeyArray | None, loss: str) -> PRNGKeyArray:
    if key is None:
        raise ValueError(
            f"{loss} samples negatives and needs a key: loss(model, batch, key). zoo.train "
            "passes one at every step."
        )
    return _checks.key("key", key, example="loss(model, batch, jax.random.key(0))")


def _sampled_scores(model, batch, key, sampler, num_negatives, loss) -> Float[Array, "b m"]:
    """Scores of each positive (column 0) and of its `num_negatives` sampled negatives."""
    users, items = _positives(batch, loss)
    sampler.check_covers(model, loss)
    negatives = sampler(_checked_key(key, loss), users, num_negatives)
    return pair_scores(model, users, jnp.concatenate([items[:, None], negatives], axis=1))


def _check_sampler(sampler, num_negatives: int, loss: str) -> None:
    if not isinstance(sampler, NegativeSampler):
        raise TypeError(
            f"{loss} needs a zoo.recsys.NegativeSampler; got {type(sampler).__name__}. Example: "
            f"zoo.recsys.{loss}(zoo.recsys.NegativeSampler(num_items), num_negatives=4)"
        )
    _checks.positive_int(
        "num_negatives",
        num_negatives,
        example=f"zoo.recsys.{loss}(zoo.recsys.NegativeSampler(num_items), num_negatives=4)",
    )


def bpr_loss(sampler: NegativeSampler, *, num_negatives: IntLike = 1) -> LossFn:
    """Bayesian personalised ranking (Rendle et al., 2009): positives above sampled negatives.

    For each positive `(u, i)` and each of `num_negatives` items `j` drawn by `sampler`, the
    loss is `-log sigmoid(score(u, i) - score(u, j))`, averaged over all such triples.

    **Arguments:**

    - `sampler`: draws the negatives (uniform or by popularity, optionally skipping each
        user's positives).
    - `num_negatives`: negatives per positive.

    **Returns:**

    `loss(model, batch, key) -> scalar` for [`zoo.train`][], for any model scoring
    `model(user, item)`. The negatives come from `key`, which `zoo.train` gives each step.

    **Example:**

    ```python
    data = zoo.data.synthetic_interactions(200, 100, key=jax.random.key(0))
    train, test = zoo.data.leave_last_out(data)
    model = zoo.MatrixFactorization(train.num_users, train.num_items, key=jax.random.key(1))
    key = jax.random.key(2)
    sampler = zoo.recsys.NegativeSampler(train.num_items, interactions=train,
                                         exclude_positives=True)
    model, history = zoo.train(model, train, loss=zoo.recsys.bpr_loss(sampler), epochs=2, key=key)
    ```
    """
    _check_sampler(sampler, num_negatives, "bpr_loss")

    def loss(model, batch: Batch, key: PRNGKeyArray | None = None) -> Scalar:
        scores = _sampled_scores(model, batch, key, sampler, num_negatives, "bpr_loss")
        return -jnp.mean(jax.nn.log_sigmoid(scores[:, :1] - scores[:, 1:]))

    return loss


def bce_loss(sampler: NegativeSampler, *, num_negatives: IntLike = 4) -> LossFn:
    """Binary cross-entropy with sampled negatives, as NCF trains: positives are labelled 1 and
    `num_negatives` sampled items per positive 0.

    The loss is the sigmoid cross-entropy of the scores (as logits) against those labels,
    averaged over all `1 + num_negatives` pairs of each positive.

    **Arguments:**

    - `sampler`: draws the negatives.
    - `num_negatives`: negatives per positive (NCF uses 4).

    **Returns:**

    `loss(model, batch, key) -> scalar` for [`zoo.train`][]; a pointwise loss, so the scores
    are calibrated logits (e.g. `zoo.recsys.DLRMRecommender`).

    **Example:**

    ```python
    data = zoo.data.synthetic_interactions(200, 100, key=jax.random.key(0))
    train, test = zoo.data.leave_last_out(data)
    loss = zoo.recsys.bce_loss(zoo.recsys.NegativeSampler(train.num_items), num_negatives=4)
    ```
    """
    _check_sampler(sampler, num_negatives, "bce_loss")

    def loss(model, batch: Batch, key: PRNGKeyArray | None = None) -> Scalar:
        scores = _sampled_scores(model, batch, key, sampler, num_negatives, "bce_loss")
        labels = jnp.zeros_like(scores).at[:, 0].set(1.0)
        return jnp.mean(optax.sigmoid_binary_cross_entropy(scores, labels))

    return loss


def _log_q(item_counts: ArrayLike) -> Float[Array, " num_items"]:
    """`log(count_i / total)` of checked counts (an item never seen counts as 1)."""
    counts = np.asarray(item_counts)
    if (
        counts.ndim != 1
        or not (np.issubdtype(counts.dtype, np.integer) or np.issubdtype(counts.dtype, np.floating))
        or not np.isfinite(counts).all()
        or (counts.size and counts.min() < 0)
        or not counts.sum() > 0
    ):
        raise ValueError(
            "item_counts must be finite counts >= 0, not all zero, one per item, shape "
            "(num_items,); got "
            f"{counts.dtype} of shape {counts.shape}"
            + (f" with values from {counts.min()} to {counts.max()}" if counts.size else "")
            + ". For example item_counts=zoo.recsys.item_counts(train, train.num_items)."
        )
    counts = np.maximum(counts.astype(np.float64), 1.0)
    return jnp.asarray(np.log(counts / counts.sum()), jnp.float32)


def in_batch_softmax_loss(*, item_counts: ArrayLike | None = None) -> LossFn:
    """Sampled softmax over the batch's items (Yi et al., 2019), for factorised models.

    Row `j` of the batch is a positive `(u_j, i_j)`; the other rows' items are its negatives.
    With `U = model.embed_users(users)` and `V = model.embed_items(items)`, the logits are
    `U @ V.T` and the loss is the softmax cross-entropy of each row against its own item.
    A row's logit for another row holding the same item is masked (it is not a negative).

    In-batch negatives are drawn in proportion to popularity, which pushes popular items
    down; the *log-q correction* subtracts `log q_i` (`q_i = count_i / total`) from each
    item's logit to undo that. Pass `item_counts` to apply it.

    **Arguments:**

    - `item_counts`: optional `(num_items,)` training counts of each item
        (`zoo.recsys.item_counts(train, num_items)`), for the log-q correction.

    **Returns:**

    `loss(model, batch, key) -> scalar` for [`zoo.train`][], for models with `embed_users` and
    `embed_items` ([`zoo.TwoTower`][], [`zoo.MatrixFactorization`][]). The key is unused.

    **Example:**

    ```python
    data = zoo.data.synthetic_interactions(200, 100, key=jax.random.key(0))
    train, test = zoo.data.leave_last_out(data)
    two_tower = zoo.TwoTower(train.num_users, train.num_items, key=jax.random.key(1))
    key = jax.random.key(2)
    counts = zoo.recsys.item_counts(train, train.num_items)
    loss = zoo.recsys.in_batch_softmax_loss(item_counts=counts)
    model, history = zoo.train(two_tower, train, loss=loss, batch_size=512, epochs=2, key=key)
    ```
    """
    log_q = None if item_counts is None else _log_q(item_counts)

    def loss(model, batch: Batch, key: PRNGKeyArray | None = None) -> Scalar:
        del key
        if not is_factorized(model):
            raise TypeError(
                "in_batch_softmax_loss needs a model with embed_users and embed_items "
                f"(zoo.TwoTower, zoo.MatrixFactorization); got {type(model).__name__}. Train "
                "it with zoo.recsys.bce_loss or bpr_loss instead."
            )
        users, items = _positives(batch, "in_batch_softmax_loss")
        if items.shape[0] < 2:
            raise ValueError(
                "in_batch_softmax_loss needs batches of at least 2 interactions: each row's "
                f"negatives are the other rows' items; got a batch of {items.shape[0]}. Use "
                "zoo.train(..., batch_size=512), and last_batch='drop' when the last batch of "
                "an epoch would hold a single row."
            )
        logits = model.embed_users(users) @ model.embed_items(items).T
        if log_q is not None and log_q.shape[0] != model.num_items:
            # A shorter log_q would be read at clamped positions: another item's count.
            raise ValueError(
                f"item_counts must hold one count per item of the model, {model.num_items}; "
                f"got {log_q.shape[0]}. For example item_counts=zoo.recsys.item_counts(train, "
                "train.num_items)."
            )
        if log_q is not None:
            logits = logits - log_q[items][None, :]
        repeated = (items[:, None] == items[None, :]) & ~jnp.eye(len(items), dtype=bool)
        logits = jnp.where(repeated, -jnp.inf, logits)
        return jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.diagonal(logits))

    return loss
