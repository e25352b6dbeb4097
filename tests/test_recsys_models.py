"""The recommender models and losses: scores, shapes, errors, and sparse-path gradients.

The models have the sizes of `helpers.planted_split` (500 users, 200 items) and of the training
tests, so that their initialisations compile once for the whole session.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo

from .helpers import tree_allclose

USERS, ITEMS = 500, 200
GENRES = np.arange(ITEMS) % 5


def two_tower(key):
    return zoo.TwoTower(USERS, ITEMS, dim=16, hidden=(32,), item_features=GENRES,
                        similarity="cosine", temperature=0.1, key=key)  # fmt: skip


def _pairs(seed, n=6):
    rng = np.random.default_rng(seed)
    users, items = rng.integers(0, USERS, n), rng.integers(0, ITEMS, n)
    return users.astype(np.int32), items.astype(np.int32)


@eqx.filter_jit
def _both_ways(model, users, items):
    """Pair scores by calling the model, and every pair's score by the embeddings' product."""
    return jax.vmap(model)(users, items), model.embed_users(users) @ model.embed_items(items).T


def test_matrix_factorization_scores_are_dots_plus_biases(getkey):
    model = zoo.MatrixFactorization(USERS, ITEMS, dim=16, key=getkey())
    biases = (np.arange(USERS, dtype=np.float32), 10 * np.arange(ITEMS, dtype=np.float32))
    model = eqx.tree_at(
        lambda m: (m.user_bias.weight, m.item_bias.weight, m.global_bias),
        model,
        (jnp.asarray(biases[0][:, None]), jnp.asarray(biases[1][:, None]), jnp.array(100.0)),
    )
    users, items = _pairs(0)
    scores, every_pair = _both_ways(model, users, items)
    p = np.asarray(model.user_embedding.weight)[users]
    q = np.asarray(model.item_embedding.weight)[items]
    expected = np.sum(p * q, axis=1) + biases[0][users] + biases[1][items] + 100.0
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    np.testing.assert_allclose(np.diagonal(every_pair), scores, rtol=1e-5)
    plain = zoo.MatrixFactorization(USERS, ITEMS, 16, user_bias=False, item_bias=False,
                                    global_bias=False, key=getkey())  # fmt: skip
    assert plain.user_bias is None and plain.global_bias is None


def test_two_tower_with_a_side_feature_and_cosine(getkey):
    model = two_tower(getkey())
    assert [e.num_embeddings for e in model.item_tower.features] == [5]
    assert model.user_tower.table is None and model.item_tower.mlp.in_size == 32
    users, items = _pairs(1)
    scores, every_pair = _both_ways(model, users, items)
    assert np.max(np.abs(scores)) <= 10.0 + 1e-4  # |cosine| / temperature
    np.testing.assert_allclose(np.diagonal(every_pair), scores, rtol=1e-5)
    # The side feature counts: the same items with another genre score differently.
    other = eqx.tree_at(lambda m: m.item_tower.table, model, jnp.zeros((ITEMS, 1), jnp.int32))
    assert not np.allclose(_both_ways(other, users, items)[0], scores)


def test_dlrm_interactions_follow_the_paper(getkey):
    counts = np.arange(ITEMS)
    recommender = zoo.recsys.DLRMRecommender(
        USERS, ITEMS, counts, dim=8, bottom=(), top=(4,), key=getkey()
    )
    model = recommender.dlrm
    assert model.vocab_sizes == (USERS, ITEMS) and model.top.in_size == 8 + 3
    dense, ids = jnp.array([0.5]), jnp.array([3, 17])

    # The pair's dense feature is the item's log popularity: log(1 + 17) / log(1 + 199).
    pair_dense = jnp.array([np.log1p(17) / np.log1p(ITEMS - 1)], jnp.float32)

    @eqx.filter_jit
    def three_ways(recommender):
        model = recommender.dlrm
        vectors = [model.bottom(dense), model.embeddings[0](ids[0]), model.embeddings[1](ids[1])]
        dots = [jnp.dot(vectors[a], vectors[b]) for a, b in ((0, 1), (0, 2), (1, 2))]
        by_hand = model.top(jnp.concatenate([vectors[0], jnp.stack(dots)]))[0]
        return (model(dense, ids), by_hand), (recommender(ids[0], ids[1]), model(pair_dense, ids))

    (logit, by_hand), (pair_logit, expected) = three_ways(recommender)
    np.testing.assert_allclose(logit, by_hand, rtol=1e-5)
    np.testing.assert_allclose(pair_logit, expected, rtol=1e-5)
    with pytest.raises(ValueError, match=r"one id per table, shape \(2,\)"):
        model(dense, jnp.array([1, 2, 3]))


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda k: zoo.MatrixFactorization(0, 5, key=k), ValueError, "num_users must be"),
        (lambda k: zoo.TwoTower(5, 5, similarity="l2", key=k), ValueError, "similarity must"),
        (lambda k: zoo.TwoTower(5, 5, temperature=0.0, key=k), ValueError, "temperature must"),
        (
            lambda k: zoo.TwoTower(5, 5, item_features=np.zeros((4, 1), int), key=k),
            ValueError,
            r"item_features must be .* shape \(num_items",
        ),
        (lambda k: zoo.DLRM(2, (), key=k), ValueError, "vocab_sizes must name"),
        (lambda k: zoo.DLRM(2, (5, 0), key=k), ValueError, r"vocab_sizes\[1\] must be"),
        (
            lambda k: zoo.recsys.DLRMRecommender(3, 4, np.ones(3, int), key=k),
            ValueError,
            r"item_counts must be .* \(4,\)",
        ),
        (lambda k: zoo.recsys.bpr_loss(None), TypeError, "sampler"),
        (
            lambda k: zoo.recsys.bce_loss(zoo.recsys.NegativeSampler(5), num_negatives=0),
            ValueError,
            "num_negatives must be",
        ),
    ],
)
def test_bad_arguments_name_the_argument(getkey, build, error, message):
    with pytest.raises(error, match=message):
        build(getkey())


@eqx.filter_jit
def _losses_and_parts(model, batch, key, sampler, losses):
    negatives = sampler(key, batch["user"], 2)
    parts = (
        jax.vmap(model)(batch["user"], batch["item"]),
        jax.vmap(jax.vmap(model, (None, 0)))(batch["user"], negatives),
        model.embed_users(batch["user"]) @ model.embed_items(batch["item"]).T,
    )
    return parts, tuple(loss(model, batch, key) for loss in losses)


def test_losses_match_their_formulas(getkey):
    model = zoo.MatrixFactorization(USERS, ITEMS, dim=16, key=getkey())
    batch = {"user": jnp.array([0, 1, 2]), "item": jnp.array([4, 5, 4])}
    counts = np.ones(ITEMS, int)
    counts[4], counts[5] = 4, 2  # 204 interactions in all
    sampler = zoo.recsys.NegativeSampler(ITEMS)
    losses = (
        zoo.recsys.bpr_loss(sampler, num_negatives=2),
        zoo.recsys.bce_loss(sampler, num_negatives=2),
        zoo.recsys.in_batch_softmax_loss(item_counts=counts),
    )
    parts, (bpr, bce, softmax) = _losses_and_parts(model, batch, getkey(), sampler, losses)
    positive, negative, logits = (np.asarray(part, np.float64) for part in parts)
    expected = -np.mean(np.log(1 / (1 + np.exp(-(positive[:, None] - negative)))))
    assert float(bpr) == pytest.approx(expected, rel=1e-5)
    expected = (np.sum(np.log1p(np.exp(-positive))) + np.sum(np.log1p(np.exp(negative)))) / 9
    assert float(bce) == pytest.approx(expected, rel=1e-5)
    logits = logits - np.log(np.array([4.0, 2.0, 4.0]) / 204)
    rows = [  # rows 0 and 2 hold the same item: neither is the other's negative
        np.log(np.sum(np.exp(logits[0, :2]))) - logits[0, 0],
        np.log(np.sum(np.exp(logits[1]))) - logits[1, 1],
        np.log(np.sum(np.exp(logits[2, 1:]))) - logits[2, 2],
    ]
    assert float(softmax) == pytest.approx(np.mean(rows), rel=1e-5)
    with pytest.raises(ValueError, match="needs a key"):
        zoo.recsys.bpr_loss(zoo.recsys.NegativeSampler(ITEMS))(model, batch, None)
    with pytest.raises(TypeError, match="embed_users and embed_items"):
        zoo.recsys.in_batch_softmax_loss()(zoo.recsys.RandomScores(ITEMS, key=getkey()), batch)


def _dense(grads):
    """SparseRows leaves scattered into full tables, to compare with dense gradients."""

    def densify(leaf):
        if not zoo.sparse.is_sparse_rows(leaf):
            return leaf
        table = jnp.zeros((leaf.num_rows, leaf.values.shape[1]), leaf.values.dtype)
        return table.at[leaf.ids].add(leaf.values, mode="drop")

    return jax.tree.map(densify, grads, is_leaf=zoo.sparse.is_sparse_rows)


def test_in_batch_softmax_has_the_same_gradients_on_the_sparse_path(getkey):
    # zoo.sparse sees tables only through Embedding calls: the towers' vmapped lookups (ids
    # and side features) must give exactly the dense gradient. BPR and BCE take the sparse
    # path in the training tests.
    model = two_tower(getkey())
    loss = zoo.recsys.in_batch_softmax_loss(item_counts=np.arange(1, ITEMS + 1))
    batch = {"user": jnp.array([0, 1, 2, 3, 3]), "item": jnp.array([1, 2, 3, 4, 1])}
    sparse = eqx.filter_jit(zoo.sparse.value_and_grad(loss))(model, batch, None)
    dense = eqx.filter_jit(eqx.filter_value_and_grad(loss))(model, batch, None)
    assert float(sparse[0]) == pytest.approx(float(dense[0]), rel=1e-6)
    assert tree_allclose(_dense(sparse[1]), dense[1], rtol=1e-5, atol=1e-6)


def test_a_popularity_sampler_refuses_all_zero_counts():
    # Before: every draw landed on the last item.
    empty = {"user": np.zeros(0, np.int64), "item": np.zeros(0, np.int64)}
    with pytest.raises(ValueError, match=r"popularity.*not all zero"):
        zoo.recsys.NegativeSampler(10, distribution="popularity", interactions=empty)


def test_log_q_counts_must_not_be_all_zero():
    with pytest.raises(ValueError, match=r"item_counts.*not all zero"):
        zoo.recsys.in_batch_softmax_loss(item_counts=np.zeros(10))


def test_log_q_counts_must_cover_the_catalogue(getkey):
    # Before: items 6..9 read the count of item 5 (a clamped gather).
    model = zoo.TwoTower(8, 10, dim=4, key=getkey())
    batch = {"user": jnp.array([0, 1, 2]), "item": jnp.array([1, 9, 3])}
    short = zoo.recsys.in_batch_softmax_loss(item_counts=np.ones(6))  # 6 of the 10 items
    with pytest.raises(ValueError, match=r"item_counts must hold one count per item.* 10; got 6"):
        short(model, batch)


def test_a_sampler_must_draw_from_the_models_catalogue(getkey):
    model = zoo.TwoTower(8, 10, dim=4, key=getkey())
    batch = {"user": jnp.array([0, 1, 2]), "item": jnp.array([1, 9, 3])}
    small = zoo.recsys.bpr_loss(zoo.recsys.NegativeSampler(6))
    with pytest.raises(ValueError, match=r"sampler draws from 6 items .* num_items=10"):
        small(model, batch, getkey())
