"""Next-item losses for sequential recommenders: `sequence_loss(kind)` for `zoo.train`."""

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, Scalar

from .. import _checks
from .._custom_types import Batch, IntLike, LossFn
from ._sampling import NegativeSampler

_KINDS = ("bce", "softmax", "sampled_softmax")
_DEFAULT_NEGATIVES = {"bce": 1, "softmax": 0, "sampled_softmax": 128}
_EXAMPLE = 'zoo.recsys.sequence_loss("sampled_softmax", num_negatives=128)'


def sequence_loss(
    kind: str = "softmax",  # checked below, with a clearer message than a type error's
    *,
    num_negatives: IntLike | None = None,
    sampler: NegativeSampler | None = None,
) -> LossFn:
    """The next-item loss of a sequential recommender ([`zoo.SASRec`][]), at every position.

    A batch holds rows of [`zoo.data.sequences`][]: `"input"` and `"target"` `(b, max_len)`
    (and `"user"`). The model is called on each input row (with a dropout key of its own) to
    give hidden states `h_t`; the score of item `i` at position `t` is `h_t . e_i`, `e_i`
    the item's embedding. Padded positions (target `num_items`) do not count; the loss is the
    mean over the others.

    - `"bce"`: the loss of the SASRec paper: binary cross-entropy of the target (label 1)
        and of `num_negatives` (default 1) sampled items per position (label 0).
    - `"softmax"`: cross-entropy of a softmax over the whole catalogue (Klenitskiy &
        Vasilev, 2023: the strongest under full ranking). It scores every item at every
        real position, so it reads the whole item table; padded positions are moved out
        and cost no scores (a left-padded batch is often mostly padding).
    - `"sampled_softmax"`: a softmax over the target and `num_negatives` (default 128)
        items drawn per sequence, shared by its positions, with the *log-q correction*:
        each candidate's logit minus `log q_i`, its probability under the sampler, which
        makes the sampled softmax an unbiased stand-in for the full one. A sampled item equal
        to the position's target is masked out.

    **Sparse or dense.** `"bce"` and `"sampled_softmax"` read the item table only by calling
    the embedding on the targets and the sampled items, so the table trains in `O(batch)` per
    step with a `zoo.sparse` optimizer (e.g. `zoo.sparse.partition(dense=optax.adam(1e-3),
    embeddings=zoo.sparse.rowwise_adagrad(0.05))`) as well as with optax. `"softmax"` touches
    every row at every step: train it on the dense path (an optax optimizer); through a sparse
    optimizer it still works, at the cost of a gradient of every row.

    **Arguments:**

    - `kind`: `"bce"`, `"softmax"` or `"sampled_softmax"`.
    - `num_negatives`: sampled items per position (`"bce"`) or per sequence
        (`"sampled_softmax"`); not for `"softmax"`.
    - `sampler`: a [`zoo.recsys.NegativeSampler`][] for the sampled losses (popularity
        sampling, skipping each user's positives, ...; it is called with the batch's
        `"user"`); default: uniform over the catalogue.

    **Returns:**

    `loss(model, batch, key) -> scalar` for [`zoo.train`][]; `key` drives dropout and the
    sampling, and `zoo.train` passes a fresh one at every step.

    **Example:**

    ```python
    train, _ = zoo.data.leave_last_out(zoo.data.synthetic_sequences(50, 30, key=jax.random.key(1)))
    model = zoo.SASRec(num_items=train.num_items, dim=16, max_len=10, key=jax.random.key(0))
    rows = zoo.data.sequences(train, max_len=10)
    model, history = zoo.train(model, rows, loss=zoo.recsys.sequence_loss("softmax"),
                               optimizer=optax.adam(1e-3), epochs=2, key=jax.random.key(2))
    ```
    """
    num_negatives = _checked(kind, num_negatives, sampler)

    def loss(model, batch: Batch, key: PRNGKeyArray | None = None) -> Scalar:
        inputs, targets = _rows(batch)
        if key is None and kind != "softmax":
            raise ValueError(
                f'sequence_loss("{kind}") samples negatives and needs a key: '
                "loss(model, batch, key). zoo.train passes one at every step."
            )
        dropout_key, negative_key = (None, None) if key is None else jax.random.split(key)
        hidden = _hidden_states(model, inputs, dropout_key)
        real = targets != model.num_items
        count = jnp.maximum(jnp.sum(real), 1).astype(hidden.dtype)
        if kind == "softmax":
            return _full_softmax_sum(model, hidden, targets) / count
        users = batch.get("user", jnp.zeros(len(inputs), jnp.int32))
        if sampler is not None:
            sampler.check_covers(model, "sequence_loss")
        draw = _drawer(model.num_items, sampler, negative_key, users)
        if kind == "bce":
            per_position = _bce(model, hidden, targets, draw, num_negatives)
        else:
            log_q = _log_q(model.num_items, sampler)
            per_position = _sampled_softmax(model, hidden, targets, draw, num_negatives, log_q)
        return jnp.sum(jnp.where(real, per_position, 0.0)) / count

    def count_terms(model, batch: Batch) -> Scalar:
        # The loss is a mean over the real (unpadded) positions: zoo.train's accumulate weighs
        # micro-batches by these, so uneven sequences give the whole batch's step.
        return jnp.sum(_rows(batch)[1] != model.num_items)

    loss.count_terms = count_terms
    return loss


def _hidden_states(model, inputs: Int[Array, "b length"], key) -> Float[Array, "b length dim"]:
    if key is None:
        return jax.vmap(model)(inputs)
    keys = jax.random.split(key, len(inputs))
    return jax.vmap(lambda sequence, k: model(sequence, key=k))(inputs, keys)


_SOFTMAX_CHUNK = 512  # positions scored per matrix product of the full softmax


def _full_softmax_sum(model, hidden, targets) -> Scalar:
    """The full-softmax cross-entropy summed over the real (unpadded) positions.

    Scoring the catalogue is most of a step, and left-padded rows are mostly padding (60% of
    the positions of `zoo train recommender --model sasrec`'s rows of 200 on the stand-in).
    So the real positions are moved to the front (a stable sort of the flattened batch),
    cut into chunks of `_SOFTMAX_CHUNK`, and a chunk scores the catalogue only if it holds a
    real position (`lax.cond`, forward and backward): the work follows the real positions,
    not the padded shape. The same figure as scoring every position and masking the padding.
    """
    num_items = model.num_items
    items = model.item_embedding(jnp.arange(num_items))
    dim = hidden.shape[-1]
    hidden, targets = hidden.reshape(-1, dim), targets.reshape(-1)
    size = targets.shape[0]
    chunk = min(_SOFTMAX_CHUNK, size)
    padded = -(-size // chunk) * chunk
    real = targets != num_items
    count = jnp.sum(real)
    order = jnp.argsort(~real, stable=True)  # real positions first, in their order
    if padded > size:  # a last partial chunk: repeat a position, counted out below
        order = jnp.concatenate([order, jnp.zeros(padded - size, order.dtype)])
    hidden = hidden[order].reshape(-1, chunk, dim)
    labels = jnp.where(real, targets, 0)[order].reshape(-1, chunk)
    starts = jnp.arange(0, padded, chunk)

    def scored(h, label, start, items):
        logits = h @ items.T
        terms = optax.softmax_cross_entropy_with_integer_labels(logits, label)
        return jnp.sum(jnp.where(start + jnp.arange(chunk) < count, terms, 0.0))

    def chunk_sum(h, label, start):
        skipped = lambda *_: jnp.zeros((), hidden.dtype)  # noqa: E731
        return jax.lax.cond(start < count, scored, skipped, h, label, start, items)

    return jnp.sum(jax.lax.map(lambda xs: chunk_sum(*xs), (hidden, labels, starts)))


def _bce(model, hidden, targets, draw, num_negatives: int) -> Float[Array, "b length"]:
    b, length, _ = hidden.shape
    negatives = draw(length * num_negatives).reshape(b, length, num_negatives)
    positive = jnp.sum(hidden * model.item_embedding(targets), axis=-1)
    negative = jnp.einsum("bld,blnd->bln", hidden, model.item_embedding(negatives))
    return -jax.nn.log_sigmoid(positive) - jnp.sum(jax.nn.log_sigmoid(-negative), axis=-1)


def _sampled_softmax(model, hidden, targets, draw, num_negatives, log_q) -> Float[Array, "b l"]:
    negatives = draw(num_negatives)  # (b, n): shared by a sequence's positions
    positive = jnp.sum(hidden * model.item_embedding(targets), axis=-1) - log_q[targets]
    negative = jnp.einsum("bld,bnd->bln", hidden, model.item_embedding(negatives))
    negative = negative - log_q[negatives][:, None, :]
    hits: Bool[Array, "b l n"] = negatives[:, None, :] == targets[:, :, None]
    logits = jnp.concatenate([positive[..., None], jnp.where(hits, -jnp.inf, negative)], -1)
    return jax.nn.logsumexp(logits, axis=-1) - positive


def _drawer(num_items: int, sampler: NegativeSampler | None, key, users):
    """`draw(num) -> (b, num)` item ids, uniform or from `sampler`."""
    if sampler is None:
        return lambda num: jax.random.randint(key, (len(users), num), 0, num_items)
    return lambda num: sampler(key, users, num)


def _log_q(
    num_items: IntLike, sampler: NegativeSampler | None
) -> Float[Array, " num_items_plus_1"]:
    """Log-probability of each item under the sampler; the padding id's entry is unused."""
    if sampler is None or sampler.cumulative is None:
        probabilities = jnp.full(num_items, 1.0 / num_items)
    else:
        probabilities = jnp.diff(sampler.cumulative, prepend=0.0) / sampler.cumulative[-1]
    # An item never drawn has q = 0; its logit is only ever the target's, so clip, not -inf.
    return jnp.append(jnp.log(jnp.maximum(probabilities, 1e-12)), 0.0)


def _rows(batch: Batch) -> tuple[Int[Array, "b length"], Int[Array, "b length"]]:
    if "input" not in batch or "target" not in batch:
        raise ValueError(
            "sequence_loss needs batches of zoo.data.sequences rows {'input': ..., "
            f"'target': ...}}; got keys {sorted(batch)}. Train on "
            "zoo.data.sequences(train, max_len=50)."
        )
    return batch["input"], batch["target"]


def _checked(kind, num_negatives, sampler) -> int:
    if kind not in _KINDS:
        raise ValueError(
            f"kind must be one of {', '.join(map(repr, _KINDS))}; got {kind!r}. Example: {_EXAMPLE}"
        )
    if kind == "softmax" and (num_negatives is not None or sampler is not None):
        raise ValueError(
            'sequence_loss("softmax") scores the whole catalogue and takes no num_negatives or '
            f"sampler; for sampled negatives use {_EXAMPLE}."
        )
    if sampler is not None and not isinstance(sampler, NegativeSampler):
        raise TypeError(
            f"sampler must be a zoo.recsys.NegativeSampler; got {type(sampler).__name__}. "
            f"Example: {_EXAMPLE}"
        )
    num_negatives = _DEFAULT_NEGATIVES[kind] if num_negatives is None else num_negatives
    if kind != "softmax":
        num_negatives = _checks.positive_int("num_negatives", num_negatives, example=_EXAMPLE)
    return num_negatives
