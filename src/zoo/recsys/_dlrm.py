"""`zoo.DLRM` (Naumov et al., 2019), and `DLRMRecommender`: DLRM on user-item pairs."""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from .. import _checks
from .._custom_types import IntLike
from .._io._rebuild import Rebuildable
from .._nn._embedding import Embedding
from .._nn._mlp import MLP
from ._factorized import check_counts

_EXAMPLE = "zoo.DLRM(num_dense=13, vocab_sizes=(1000, 500, 20), dim=16, key=jax.random.key(0))"


class DLRM(Rebuildable, saved_as="zoo.DLRM"):
    """The Deep Learning Recommendation Model: a click (or interaction) logit from dense and
    categorical features.

    As in the paper: the dense features go through a *bottom* MLP (ReLU throughout) to a
    `dim`-vector; each categorical feature looks up a `dim`-vector in its own
    [`zoo.Embedding`][] table; the dot products of every pair of these `1 + S` vectors (the
    *interactions*, `(1 + S) S / 2` of them) are concatenated with the bottom MLP's output and
    go through a *top* MLP to one logit. The defaults are small; the paper's Criteo model uses
    `dim=16`, `bottom=(512, 256, 64)` and `top=(512, 256)`.

    **Example:**

    ```python
    key = jax.random.key(0)
    dense_features, categorical_ids = jnp.ones(13), jnp.array([3, 7, 1])
    dense_batch, ids_batch = jnp.ones((8, 13)), jnp.zeros((8, 3), "int32")
    model = zoo.DLRM(num_dense=13, vocab_sizes=(1000, 500, 20), dim=16, key=key)
    logit = model(dense_features, categorical_ids)  # (13,) floats and (3,) ids
    logits = jax.vmap(model)(dense_batch, ids_batch)  # train with loss="bce"-style losses
    ```
    """

    bottom: MLP
    embeddings: tuple[Embedding, ...]
    top: MLP
    num_dense: int = eqx.field(static=True)
    vocab_sizes: tuple[int, ...] = eqx.field(static=True)
    dim: int = eqx.field(static=True)

    def __init__(
        self,
        num_dense: IntLike,
        vocab_sizes: Sequence[IntLike],
        dim: IntLike = 16,
        *,
        bottom: Sequence[IntLike] = (64,),
        top: Sequence[IntLike] = (64, 32),
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `num_dense`: the number of dense (real-valued) features.
        - `vocab_sizes`: the number of ids of each categorical feature, one table each.
        - `dim`: the size of the embeddings and of the bottom MLP's output.
        - `bottom`: the hidden widths of the bottom MLP.
        - `top`: the hidden widths of the top MLP.
        - `key`: a `jax.random.key` for the initialisation.
        """
        vocab_sizes = tuple(vocab_sizes)
        if not vocab_sizes:
            raise ValueError(f"vocab_sizes must name at least one categorical feature: {_EXAMPLE}")
        sizes = {f"vocab_sizes[{j}]": size for j, size in enumerate(vocab_sizes)}
        num_dense, dim, *vocab_sizes = check_counts(_EXAMPLE, num_dense=num_dense, dim=dim, **sizes)
        vocab_sizes = tuple(vocab_sizes)
        _checks.key("key", key, example=_EXAMPLE)
        keys = jax.random.split(key, 2 + len(vocab_sizes))
        self.bottom = MLP(num_dense, dim, tuple(bottom), final_activation="relu", key=keys[0])
        self.embeddings = tuple(
            Embedding(size, dim, key=k) for size, k in zip(vocab_sizes, keys[2:], strict=True)
        )
        num_vectors = 1 + len(vocab_sizes)
        num_interactions = num_vectors * (num_vectors - 1) // 2
        self.top = MLP(dim + num_interactions, 1, tuple(top), key=keys[1])
        self.num_dense = num_dense
        self.vocab_sizes = vocab_sizes
        self.dim = dim

    def __call__(
        self,
        dense: Float[Array, " num_dense"],
        categorical: Int[Array, " num_categorical"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, ""]:
        """**Arguments:**

        - `dense`: one example's dense features. Batch with `jax.vmap`.
        - `categorical`: one id per categorical feature, in the order of `vocab_sizes`.
        - `key`: ignored; accepted for a uniform model API.

        **Returns:**

        The logit, a scalar (`jax.nn.sigmoid` of it is the predicted probability).
        """
        del key
        if categorical.shape != (len(self.embeddings),):
            raise ValueError(
                f"categorical must hold one id per table, shape ({len(self.embeddings)},); got "
                f"shape {categorical.shape}. Batch with jax.vmap(model)(dense, categorical)."
            )
        x = self.bottom(dense)
        vectors = jnp.stack(
            [x, *(table(categorical[j]) for j, table in enumerate(self.embeddings))]
        )
        rows, columns = np.triu_indices(len(vectors), k=1)
        interactions = (vectors @ vectors.T)[rows, columns]
        return self.top(jnp.concatenate([x, interactions]))[0]


class DLRMRecommender(Rebuildable, saved_as="zoo.recsys.DLRMRecommender"):
    """[`zoo.DLRM`][] on user-item pairs: a pointwise recommender for interaction data.

    The user and the item are the two categorical features, and the item's popularity in the
    training data, `log(1 + count) / log(1 + max count)`, is the one dense feature, so that
    `model(user, item)` is a logit like that of any recommender in `zoo.recsys`. The counts are
    an integer table held by the model and never trained.

    Its score is not a dot product: full ranking evaluates every (user, item) pair through the
    model, which is slower than for the factorised models (see `zoo.recsys.evaluate_ranking`).

    **Example:**

    ```python
    data = zoo.data.synthetic_interactions(200, 100, key=jax.random.key(0))
    train, test = zoo.data.leave_last_out(data)
    key, users, items = jax.random.key(1), jnp.arange(4), jnp.arange(4)
    counts = zoo.recsys.item_counts(train, train.num_items)
    model = zoo.recsys.DLRMRecommender(train.num_users, train.num_items, counts, key=key)
    jax.vmap(model)(users, items)  # logits
    ```
    """

    dlrm: DLRM
    item_counts: Int[Array, " num_items"]
    num_users: int = eqx.field(static=True)
    num_items: int = eqx.field(static=True)
    log_max_count: float = eqx.field(static=True)

    def __init__(
        self,
        num_users: IntLike,
        num_items: IntLike,
        item_counts: ArrayLike,
        *,
        dim: IntLike = 16,
        bottom: Sequence[IntLike] = (64,),
        top: Sequence[IntLike] = (64, 32),
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `num_users`, `num_items`: the sizes of the id spaces.
        - `item_counts`: each item's number of training interactions, `(num_items,)`
            (`zoo.recsys.item_counts(train, num_items)`).
        - `dim`, `bottom`, `top`: as for [`zoo.DLRM`][].
        - `key`: a `jax.random.key` for the initialisation.
        """
        example = "zoo.recsys.DLRMRecommender(num_users, num_items, counts, key=key)"
        num_users, num_items = check_counts(example, num_users=num_users, num_items=num_items)
        _checks.key("key", key, example=example)
        counts = np.asarray(item_counts)
        if counts.shape != (num_items,) or not np.issubdtype(counts.dtype, np.integer):
            raise ValueError(
                f"item_counts must be integer counts of shape (num_items,) = ({num_items},); got "
                f"{counts.dtype} of shape {counts.shape}. Example: zoo.recsys.DLRMRecommender("
                "num_users, num_items, zoo.recsys.item_counts(train, num_items), key=key)"
            )
        self.dlrm = DLRM(1, (num_users, num_items), dim, bottom=bottom, top=top, key=key)
        self.item_counts = jnp.asarray(counts, jnp.int32)
        self.num_users = num_users
        self.num_items = num_items
        self.log_max_count = float(np.log1p(max(int(counts.max(initial=0)), 1)))

    def __call__(
        self, user: Int[Array, ""], item: Int[Array, ""], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, ""]:
        """The logit of one `(user, item)` pair of indices, a scalar; batch with
        `jax.vmap(model)(users, items)`. `key` is ignored (no dropout)."""
        del key
        count = self.item_counts[item].astype(jnp.float32)
        dense = (jnp.log1p(count) / self.log_max_count)[None]
        return self.dlrm(dense, jnp.stack([user, item]))
