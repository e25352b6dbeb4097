"""Property-based tests (hypothesis) of invariants that single examples would not pin down."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import given, settings, strategies as st

import zoo

from .helpers import tree_allclose

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
    trained, history = zoo.train(
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
