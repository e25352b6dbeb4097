"""`zoo.SASRec`: causal self-attention over a user's item sequence (Kang & McAuley, 2018)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from .. import _checks
from .._custom_types import IntLike, RealLike
from .._io._rebuild import Rebuildable
from .._nn._embedding import Embedding
from ..data import Interactions
from ..data._sequences import histories
from ._factorized import Factorized, check_counts

_EXAMPLE = (
    "zoo.SASRec(num_items=3706, dim=64, num_blocks=2, num_heads=1, max_len=50, dropout=0.2, "
    "key=jax.random.key(0))"
)


def _split(key: PRNGKeyArray | None, num: int) -> tuple:
    return (None,) * num if key is None else tuple(jax.random.split(key, num))


_DROPOUT_LEVELS = 2**16  # a draw of 16 bits per element: the rate rounds to a multiple of 2^-16


def _dropout(x: Array, rate: float, key: PRNGKeyArray | None) -> Array:
    """Inverted dropout: each element kept with probability `1 - rate` (rounded to a multiple of
    2^-16, 0.2 to 0.19999695) and scaled by its inverse, so unbiased; nothing without a key.

    Each 32-bit random word decides two elements (its low and high 16 bits): drawing the bits
    is most of a dropout's cost on CPU, and SASRec draws seven masks of the whole batch's
    activations per step (`jax.random.bernoulli`, a word and a float conversion per element,
    made that a quarter of the step at the CLI's rows of 200). The rate is a static field of
    the model, not an `eqx.nn.Dropout` leaf: a Python float leaf would be traced (and
    differentiated) once the model is carried through a loop.
    """
    # A rate within 2^-17 of 1 would round to dropping everything (and a scale of 1/0): the
    # rate is below 1, so one level is always kept.
    threshold = min(round(rate * _DROPOUT_LEVELS), _DROPOUT_LEVELS - 1)
    if key is None or threshold == 0:
        return x
    words = jax.random.bits(key, (-(-x.size // 2),), jnp.uint32)
    halves = jnp.concatenate([words & 0xFFFF, words >> 16])[: x.size].reshape(x.shape)
    scale = _DROPOUT_LEVELS / (_DROPOUT_LEVELS - threshold)
    return jnp.where(halves >= threshold, x * jnp.asarray(scale, x.dtype), jnp.zeros((), x.dtype))


class _Block(eqx.Module):
    """A pre-norm transformer block: causal multi-head self-attention, then a position-wise
    feed-forward network, each with dropout on its output and a residual connection."""

    attention_norm: eqx.nn.LayerNorm
    query_key_value: eqx.nn.Linear
    attention_output: eqx.nn.Linear
    feedforward_norm: eqx.nn.LayerNorm
    hidden: eqx.nn.Linear
    output: eqx.nn.Linear
    num_heads: int = eqx.field(static=True)
    dropout: float = eqx.field(static=True)

    def __init__(self, dim: int, num_heads: int, dropout: float, *, key: PRNGKeyArray):
        keys = jax.random.split(key, 4)
        self.attention_norm = eqx.nn.LayerNorm(dim)
        self.query_key_value = eqx.nn.Linear(dim, 3 * dim, key=keys[0])
        self.attention_output = eqx.nn.Linear(dim, dim, key=keys[1])
        self.feedforward_norm = eqx.nn.LayerNorm(dim)
        self.hidden = eqx.nn.Linear(dim, dim, key=keys[2])
        self.output = eqx.nn.Linear(dim, dim, key=keys[3])
        self.num_heads = num_heads
        self.dropout = dropout

    def __call__(
        self,
        x: Float[Array, "length dim"],
        mask: Bool[Array, "length length"],
        key: PRNGKeyArray | None,
    ) -> Float[Array, "length dim"]:
        keys = _split(key, 3)
        length, dim = x.shape
        y = jax.vmap(self.query_key_value)(jax.vmap(self.attention_norm)(x))
        heads = y.reshape(length, 3, self.num_heads, dim // self.num_heads)
        y = jax.nn.dot_product_attention(heads[:, 0], heads[:, 1], heads[:, 2], mask=mask[None])
        y = jax.vmap(self.attention_output)(y.reshape(length, dim))
        x = x + _dropout(y, self.dropout, keys[0])
        y = jax.nn.relu(jax.vmap(self.hidden)(jax.vmap(self.feedforward_norm)(x)))
        y = jax.vmap(self.output)(_dropout(y, self.dropout, keys[1]))
        return x + _dropout(y, self.dropout, keys[2])


class SASRec(Rebuildable, saved_as="zoo.SASRec"):
    """SASRec (Kang & McAuley, ICDM 2018): a causal transformer over one user's item sequence.

    Item `i` of the sequence is its row of an item [`zoo.Embedding`][] plus a learned position
    vector; `num_blocks` pre-norm blocks of causal multi-head self-attention
    (`jax.nn.dot_product_attention`) and feed-forward layers (dropout, residuals, layer norm)
    follow, and a final layer norm. The output at
    position `t` depends on the items up to `t` only, and its dot product with an item's
    embedding (the same table, tied) is that item's score as the next one.

    The padding id is `num_items` (the table's extra last row, kept at zero): it contributes
    nothing and no position attends to it. Positions count from the end, so a left-padded
    sequence scores as the same sequence unpadded.

    A [`zoo.recsys.SequentialRanker`][] (from `model.ranker(train)`) scores users by their
    training histories; [`zoo.recsys.evaluate_ranking`][] builds it itself, so a trained
    SASRec is evaluated like any other recommender. Train it with
    [`zoo.recsys.sequence_loss`][] on [`zoo.data.sequences`][].

    !!! example

        ```python
        data = zoo.data.synthetic_sequences(200, 100, key=jax.random.key(1))
        train, test = zoo.data.leave_last_out(data)
        model = zoo.SASRec(num_items=train.num_items, dim=32, num_blocks=2, num_heads=1,
                           max_len=20, dropout=0.2, key=jax.random.key(0))
        model, history = zoo.train(model, zoo.data.sequences(train, max_len=20),
                                   loss=zoo.recsys.sequence_loss("softmax"), epochs=2)
        hidden = model(jnp.array([3, 17, 5]))             # (3, 64): one state per position
        scores = model.scores(jnp.array([3, 17, 5]))[-1]  # (num_items,): the next item's
        zoo.recsys.evaluate_ranking(model, train, test)
        ```
    """

    item_embedding: Embedding
    positions: Float[Array, "max_len dim"]
    blocks: tuple[_Block, ...]
    final_norm: eqx.nn.LayerNorm
    num_items: int = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    num_blocks: int = eqx.field(static=True)
    num_heads: int = eqx.field(static=True)
    max_len: int = eqx.field(static=True)
    dropout: float = eqx.field(static=True)

    def __init__(
        self,
        num_items: IntLike,
        dim: IntLike = 64,
        num_blocks: IntLike = 2,
        num_heads: IntLike = 1,
        max_len: IntLike = 50,
        dropout: RealLike = 0.2,
        *,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `num_items`: the size of the item id space (ids `0 .. num_items - 1`; `num_items` is
            the padding id).
        - `dim`: the size of the item embeddings and of every hidden state.
        - `num_blocks`: the number of self-attention blocks.
        - `num_heads`: attention heads per block; must divide `dim`.
        - `max_len`: the longest sequence the model reads (the number of positions).
        - `dropout`: the dropout rate of the input embeddings and of the output of each
            attention and feed-forward layer, applied only when `__call__` gets a key
            (drawn as 16 random bits per activation: the rate is rounded to a multiple of
            2^-16, 0.2 to 0.19999695).
        - `key`: a `jax.random.key` for the initialisation.
        """
        _checks.key("key", key, example=_EXAMPLE)
        num_items, dim, num_blocks, num_heads, max_len = check_counts(
            _EXAMPLE,
            num_items=num_items,
            dim=dim,
            num_blocks=num_blocks,
            num_heads=num_heads,
            max_len=max_len,
        )
        if dim % num_heads:
            raise ValueError(
                f"num_heads must divide dim; got num_heads={num_heads}, dim={dim}. Example: "
                f"{_EXAMPLE}"
            )
        if _checks.is_real(dropout) and not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a probability in [0, 1); got {dropout!r}.")
        dropout = _checks.real("dropout", dropout, low=0.0, high=1.0, high_open=True)
        item_key, position_key, block_key = jax.random.split(key, 3)
        self.item_embedding = Embedding(num_items + 1, dim, padding_idx=num_items, key=item_key)
        self.positions = jax.random.normal(position_key, (max_len, dim)) * (1 / dim**0.5)
        self.blocks = tuple(
            _Block(dim, num_heads, dropout, key=k) for k in jax.random.split(block_key, num_blocks)
        )
        self.final_norm = eqx.nn.LayerNorm(dim)
        self.num_items = num_items
        self.dim = dim
        self.num_blocks = num_blocks
        self.num_heads = num_heads
        self.max_len = max_len
        self.dropout = float(dropout)

    def __call__(
        self, sequence: Int[ArrayLike, " length"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "length dim"]:
        """**Arguments:**

        - `sequence`: one user's items, oldest first, `1 <= length <= max_len`, left-padded
            with `num_items` if at all. Batch with `jax.vmap`.
        - `key`: a PRNG key for dropout; `None` (the default) means inference: no dropout.

        **Returns:**

        The hidden state at each position, `(length, dim)`: row `t` summarises the items up
        to `t` (zeros at padding). Its dot product with `item_vector(i)` is the score of `i`
        as item `t + 1`.
        """
        sequence = self._checked(sequence)
        length = sequence.shape[0]
        keys = _split(key, 1 + self.num_blocks)
        real = sequence != self.num_items
        x = self.item_embedding(sequence) + self.positions[self.max_len - length :]
        x = _dropout(x, self.dropout, keys[0])
        # Causal, and never to padding; a padding position attends to itself (no empty row).
        mask = jnp.tril(jnp.ones((length, length), bool)) & (
            real[None, :] | jnp.eye(length, dtype=bool)
        )
        for block, block_key in zip(self.blocks, keys[1:], strict=True):
            x = jnp.where(real[:, None], block(x, mask, block_key), 0.0)
        return jnp.where(real[:, None], jax.vmap(self.final_norm)(x), 0.0)

    def item_vector(self, item: Int[Array, ""]) -> Float[Array, " dim"]:
        """The embedding of one item: scores are `model(sequence) @ item_vector(item)`."""
        return self.item_embedding(item)

    def scores(self, sequence: Int[Array, " length"]) -> Float[Array, "length num_items"]:
        """The score of every item of the catalogue as the next item, at each position
        (inference: no dropout)."""
        items = self.item_embedding(jnp.arange(self.num_items))
        return self(sequence) @ items.T

    def ranker(self, interactions: Interactions) -> "SequentialRanker":
        """A [`zoo.recsys.SequentialRanker`][]: scores each user's next item from their latest
        `max_len` items in `interactions` (the training split)."""
        return SequentialRanker(self, interactions)

    def _checked(self, sequence: Int[ArrayLike, " length"]) -> Int[Array, " length"]:
        if not isinstance(sequence, jax.Array):
            sequence = _checks.fits_int32("sequence", sequence)  # before JAX could wrap an int64 id
        sequence = jnp.asarray(sequence)
        if not jnp.issubdtype(sequence.dtype, jnp.integer):
            raise TypeError(
                f"sequence must hold integer item ids; got dtype {sequence.dtype}. Use "
                "sequence.astype(jnp.int32)."
            )
        if sequence.ndim != 1 or not 1 <= sequence.shape[0] <= self.max_len:
            raise ValueError(
                f"sequence must be one user's items, of shape (length,) with 1 <= length <= "
                f"max_len={self.max_len}; got shape {sequence.shape}. Keep the latest items "
                f"(sequence[-{self.max_len}:], as zoo.data.sequences does) and batch with "
                "jax.vmap(model)(sequences)."
            )
        message = (
            f"sequence ids must lie in [0, num_items] = [0, {self.num_items}] (num_items is "
            "the padding id)"
        )
        if isinstance(sequence, jax.core.Tracer):
            bad = jnp.any((sequence < 0) | (sequence > self.num_items))
            return eqx.error_if(sequence, bad, message)
        concrete = np.asarray(sequence)
        if concrete.min() < 0 or concrete.max() > self.num_items:
            raise ValueError(f"{message}; got ids from {concrete.min()} to {concrete.max()}.")
        return sequence


class SequentialRanker(Factorized):
    """A sequential model bound to users' histories, scored as a factorised recommender.

    `user_vector(u)` is the model's last hidden state on user `u`'s latest `max_len` items in
    the given interactions, `item_vector(i)` the model's item vector: so
    [`zoo.recsys.evaluate_ranking`][] ranks the whole catalogue for each user with one matrix
    product, and the popularity and random baselines beside it are unchanged. Users without
    events get a zero vector (every item scores 0).

    [`zoo.recsys.evaluate_ranking`][] and `evaluate_sampled` build one from their `train`
    argument by calling `model.ranker(train)`.

    **Example:**

    ```python
    train, _ = zoo.data.leave_last_out(zoo.data.synthetic_sequences(50, 30, key=jax.random.key(1)))
    model = zoo.SASRec(num_items=train.num_items, dim=16, max_len=10, key=jax.random.key(0))
    users, items = jnp.arange(5), jnp.arange(train.num_items)
    ranker = model.ranker(train)
    top = jnp.argsort(-(ranker.embed_users(users) @ ranker.embed_items(items).T), axis=1)
    ```
    """

    model: SASRec
    histories: Int[Array, "num_users max_len"]
    num_items: int = eqx.field(static=True)

    def __init__(self, model: SASRec, interactions: Interactions):
        """**Arguments:**

        - `model`: a sequential model such as [`zoo.SASRec`][].
        - `interactions`: the histories, with `"timestamp"` (usually the training split).
        """
        self.model = model
        self.histories = jnp.asarray(histories(interactions, model.max_len))
        self.num_items = model.num_items

    def user_vector(self, user: Int[Array, ""]) -> Float[Array, " dim"]:
        """The model's state after the user's latest item."""
        return self.model(self.histories[user])[-1]

    def item_vector(self, item: Int[Array, ""]) -> Float[Array, " dim"]:
        """The model's vector of the item."""
        return self.model.item_vector(item)
