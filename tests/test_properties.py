"""Property-based tests (hypothesis) of invariants that single examples would not pin down."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

import zoo

from .helpers import train, tree_allclose

_SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)


class _Counter(eqx.Module):
    """One weight per example: the loss sums the weights of the batch's examples, so each SGD
    step with learning rate 1 lowers exactly the visited examples' weights by one."""

    weight: jax.Array

    def __call__(self, index):
        return self.weight[index]


def _visit_count_loss(model, batch, key):
    return jnp.sum(jax.vmap(model)(batch["index"]))


@_SETTINGS
@given(
    n=st.integers(1, 40),
    batch_size=st.integers(1, 16),
    epochs=st.integers(1, 2),
    fused=st.booleans(),
    last_batch=st.sampled_from(["keep", "drop"]),
)
def test_every_example_is_visited_once_per_epoch(n, batch_size, epochs, fused, last_batch):
    if last_batch == "drop" and batch_size > n:
        return  # an error by design, tested elsewhere
    model = _Counter(jnp.zeros(n))
    data = {"index": np.arange(n, dtype=np.int32)}
    trained, history = train(
        model,
        data,
        loss=_visit_count_loss,
        optimizer=optax.sgd(1.0),
        epochs=epochs,
        batch_size=batch_size,
        fused=fused,
        last_batch=last_batch,
        key=jax.random.key(n),
    )
    visits = -np.asarray(trained.weight)
    if last_batch == "keep":
        np.testing.assert_array_equal(visits, np.full(n, epochs))
    else:
        kept = n - n % batch_size
        assert visits.sum() == epochs * kept
        assert set(np.unique(visits)) <= set(range(epochs + 1))
        assert history.get("skipped_examples_per_epoch", 0) == n % batch_size


class _Bag(eqx.Module):
    table: zoo.Embedding

    def __call__(self, ids):
        return jnp.sum(self.table(ids) ** 2)


def _bag_loss(model, batch):
    return jnp.mean(jax.vmap(model)(batch["ids"]))


_IDS = st.lists(st.integers(0, 19), min_size=12, max_size=12)


@_SETTINGS
@given(ids=_IDS)
def test_sparse_and_dense_sgd_agree_on_random_ids(ids):
    model = _Bag(zoo.Embedding(20, 4, combiner="sum", key=jax.random.key(0)))
    batch = {"ids": jnp.asarray(ids, jnp.int32).reshape(4, 3)}
    _, dense_grads = eqx.filter_value_and_grad(_bag_loss)(model, batch)
    dense = eqx.apply_updates(model, jax.tree.map(lambda g: -0.1 * g, dense_grads))
    optimizer = zoo.sparse.partition(dense=optax.sgd(0.1), embeddings=zoo.sparse.sgd(0.1))
    _, grads = zoo.sparse.value_and_grad(_bag_loss)(model, batch)
    updates, _ = optimizer.update(grads, optimizer.init(model), model)
    assert tree_allclose(zoo.sparse.apply_updates(model, updates), dense, rtol=1e-6, atol=1e-7)


@_SETTINGS
@given(ids=_IDS)
def test_sparse_rows_sum_duplicates_and_cover_exactly_the_looked_up_ids(ids):
    model = _Bag(zoo.Embedding(20, 4, combiner="sum", key=jax.random.key(1)))
    batch = {"ids": jnp.asarray(ids, jnp.int32).reshape(4, 3)}
    _, grads = zoo.sparse.value_and_grad(_bag_loss)(model, batch)
    _, dense_grads = eqx.filter_value_and_grad(_bag_loss)(model, batch)
    rows = grads.table.weight
    real = np.asarray(rows.ids) < 20
    assert sorted(np.asarray(rows.ids)[real]) == sorted(set(ids))
    np.testing.assert_allclose(
        np.asarray(rows.values)[real],
        np.asarray(dense_grads.table.weight)[np.asarray(rows.ids)[real]],
        rtol=1e-6,
    )


_SCORES = st.lists(st.integers(0, 4), min_size=48, max_size=48)  # few values: many ties
_HELD_OUT = st.lists(
    st.lists(st.integers(0, 11), min_size=0, max_size=3, unique=True), min_size=4, max_size=4
)


@_SETTINGS
@given(scores=_SCORES, held_out=_HELD_OUT)
def test_ranking_metrics_bounds_and_orderings(scores, held_out):
    scores = jnp.asarray(scores, jnp.float32).reshape(4, 12)
    targets = jnp.asarray([items + [-1] * (3 - len(items)) for items in held_out], jnp.int32)
    metrics = {
        k: np.asarray(v)
        for k, v in zoo.recsys.ranking_metrics(scores, targets, k=(1, 5, 10)).items()
    }
    for values in metrics.values():
        assert np.all((values >= 0) & (values <= 1 + 1e-6))
    assert np.all(metrics["hr@1"] <= metrics["hr@5"]) and np.all(
        metrics["hr@5"] <= metrics["hr@10"]
    )
    for k in (1, 5, 10):
        assert np.all(metrics[f"recall@{k}"] <= metrics[f"hr@{k}"] + 1e-6)
        assert np.all(metrics[f"ndcg@{k}"] <= metrics[f"hr@{k}"] + 1e-6)
    has_targets = np.array([len(items) > 0 for items in held_out])
    np.testing.assert_array_equal(metrics["mrr"] > 0, has_targets)


@_SETTINGS
@given(scores=st.lists(st.integers(0, 4), min_size=4 * 101, max_size=4 * 101))
def test_sampled_metrics_bounds(scores):
    scores = jnp.asarray(scores, jnp.float32).reshape(4, 101)
    metrics = {k: np.asarray(v) for k, v in zoo.recsys.sampled_metrics(scores, k=10).items()}
    for values in metrics.values():
        assert np.all((values >= 0) & (values <= 1))
    wins = np.asarray(scores[:, :1] > scores[:, 1:]).all(axis=1)
    np.testing.assert_array_equal(metrics["mrr"][wins], 1.0)  # a strict winner ranks first
    np.testing.assert_array_equal(metrics["auc"][wins], 1.0)


@_SETTINGS
@given(
    scores=st.lists(st.integers(-3, 3), min_size=16, max_size=16),
    labels=st.lists(st.booleans(), min_size=16, max_size=16),
)
def test_auc_bounds_and_symmetry(scores, labels):
    if all(labels) or not any(labels):
        return  # undefined without both classes (NaN by design)
    scores, labels = jnp.asarray(scores, jnp.float32), jnp.asarray(labels)
    value = float(zoo.recsys.auc(scores, labels))
    assert 0.0 <= value <= 1.0
    # Reversing the order turns wins into losses; ties count half both ways.
    assert value + float(zoo.recsys.auc(-scores, labels)) == pytest.approx(1.0)
