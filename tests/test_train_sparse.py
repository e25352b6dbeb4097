"""zoo.train with sparse-embedding optimizers: the same as a hand-written sparse step."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import zoo
from zoo._training._step import Programs, StepTotals, initial_state, make_train_step, rule_for

from .helpers import train, tree_allclose
from .test_sparse import BigModel, big_loss, table_sized_ops


class _Scorer(eqx.Module):
    users: zoo.Embedding
    items: zoo.Embedding
    head: zoo.MLP

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.users = zoo.Embedding(50, 8, key=k1)
        self.items = zoo.Embedding(40, 8, key=k2)
        self.head = zoo.MLP(16, 1, (8,), key=k3)

    def __call__(self, user, item):
        return self.head(jnp.concatenate([self.users(user), self.items(item)]))[0]


def _mse(model, batch, key):
    scores = jax.vmap(model)(batch["user"], batch["item"])
    return jnp.mean((scores - batch["rating"]) ** 2)


def _ratings(key, n=96):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "user": np.asarray(jax.random.randint(k1, (n,), 0, 50)),
        "item": np.asarray(jax.random.randint(k2, (n,), 0, 40)),
        "rating": np.asarray(jax.random.uniform(k3, (n,))),
    }


def test_train_with_a_sparse_optimizer_matches_a_hand_written_step(getkey):
    model, data, key = _Scorer(getkey()), _ratings(getkey()), getkey()
    optimizer = zoo.sparse.partition(
        dense=optax.adam(1e-2), embeddings=zoo.sparse.rowwise_adagrad(0.1)
    )
    trained, history = train(
        model, data, loss=_mse, optimizer=optimizer, epochs=2, batch_size=32, key=key,
        grad_norm=True,
    )  # fmt: skip

    @eqx.filter_jit
    def step(model, opt_state, batch):
        _, grads = zoo.sparse.value_and_grad(_mse)(model, batch, None)
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, model)
        return zoo.sparse.apply_updates(model, updates), opt_state

    expected, opt_state = model, optimizer.init(model)
    state = zoo.TrainState(model, None, *(jnp.zeros((), jnp.int32) for _ in range(3)), key)
    for epoch in range(2):
        order = np.asarray(eqx.tree_at(lambda s: s.epoch, state, jnp.int32(epoch)).epoch_order(96))
        for start in range(0, 96, 32):
            batch = {k: jnp.asarray(v[order[start : start + 32]]) for k, v in data.items()}
            expected, opt_state = step(expected, opt_state, batch)
    assert tree_allclose(trained, expected, rtol=1e-5, atol=1e-6)
    assert history["train"]["loss"][1] < history["train"]["loss"][0]
    assert all(norm > 0 for norm in history["train"]["grad_norm"])


def test_sparse_and_dense_sgd_train_to_the_same_model(getkey):
    # With plain SGD the sparse update is exactly the dense one, zero rows included.
    model, data, key = _Scorer(getkey()), _ratings(getkey()), getkey()
    sparse_opt = zoo.sparse.partition(dense=optax.sgd(0.1), embeddings=zoo.sparse.sgd(0.1))
    sparse_model, _ = train(
        model, data, loss=_mse, optimizer=sparse_opt, epochs=2, batch_size=32, key=key
    )
    dense_model, _ = train(
        model, data, loss=_mse, optimizer=optax.sgd(0.1), epochs=2, batch_size=32, key=key
    )
    assert tree_allclose(sparse_model, dense_model, rtol=1e-5, atol=1e-6)


def _taking_mse(take):
    """`_mse` with the item rows read from the table by `take`, per example (under vmap)."""

    def loss_fn(model, batch, key):
        def score(user, item):
            rows = jnp.concatenate([model.users(user), take(model.items.weight, item)])
            return model.head(rows)[0]

        return jnp.mean((jax.vmap(score)(batch["user"], batch["item"]) - batch["rating"]) ** 2)

    return loss_fn


@pytest.mark.parametrize("embeddings", ["sgd", "rowwise_adagrad"])
def test_train_with_jnp_take_of_rows_trains_as_the_method(getkey, embeddings):
    # jnp.take(weight, ids, axis=0) inside zoo.train's sparse steps (the in-place one for sgd,
    # the recorded one otherwise): the same model as `weight.take(ids, axis=0)`, and with sgd
    # as dense training.
    model, data, key = _Scorer(getkey()), _ratings(getkey()), getkey()
    optimizer = zoo.sparse.partition(
        dense=optax.sgd(0.1), embeddings=getattr(zoo.sparse, embeddings)(0.1)
    )
    take = _taking_mse(lambda w, item: jnp.take(w, item, axis=0))
    method = _taking_mse(lambda w, item: w.take(item, axis=0))
    kwargs = dict(optimizer=optimizer, epochs=2, batch_size=32, key=key)
    trained, history = train(model, data, loss=take, **kwargs)
    expected, _ = train(model, data, loss=method, **kwargs)
    assert tree_allclose(trained, expected, rtol=1e-6, atol=1e-7)
    assert history["train"]["loss"][1] < history["train"]["loss"][0]
    if embeddings == "sgd":
        dense, _ = train(model, data, loss=take, **{**kwargs, "optimizer": optax.sgd(0.1)})
        assert tree_allclose(trained, dense, rtol=1e-5, atol=1e-6)


class _SequenceScorer(eqx.Module):
    """Scores a sequence of items by running a recurrent cell over their embeddings in a
    `lax.scan`: every step of the scan looks the item table up."""

    items: zoo.Embedding
    cell: eqx.nn.GRUCell
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.items = zoo.Embedding(30, 6, padding_idx=0, key=k1)
        self.cell = eqx.nn.GRUCell(6, 5, key=k2)
        self.head = eqx.nn.Linear(5, "scalar", key=k3)

    def __call__(self, sequence):
        step = lambda h, item: (self.cell(self.items(item), h), None)  # noqa: E731
        hidden, _ = jax.lax.scan(step, jnp.zeros(5), sequence)
        return self.head(hidden)


def _sequence_mse(model, batch, key):
    return jnp.mean((jax.vmap(model)(batch["sequence"]) - batch["y"]) ** 2)


def _sequences(key, n=64, length=7):
    k1, k2 = jax.random.split(key)
    return {
        "sequence": np.asarray(jax.random.randint(k1, (n, length), 0, 30)),  # with padding 0
        "y": np.asarray(jax.random.normal(k2, (n,))),
    }


def test_sparse_sgd_trains_a_scanning_model_as_dense_sgd(getkey):
    model, data, key = _SequenceScorer(getkey()), _sequences(getkey()), getkey()
    sparse_opt = zoo.sparse.partition(dense=optax.sgd(0.05), embeddings=zoo.sparse.sgd(0.05))
    kwargs = dict(loss=_sequence_mse, epochs=2, batch_size=16, key=key)
    sparse_model, history = train(model, data, optimizer=sparse_opt, **kwargs)
    dense_model, _ = train(model, data, optimizer=optax.sgd(0.05), **kwargs)
    assert tree_allclose(sparse_model, dense_model, rtol=1e-5, atol=1e-6)
    assert history["train"]["loss"][1] < history["train"]["loss"][0]


def test_rowwise_adagrad_trains_a_scanning_model_as_a_hand_written_step(getkey):
    model, data, key = _SequenceScorer(getkey()), _sequences(getkey()), getkey()
    optimizer = zoo.sparse.partition(
        dense=optax.sgd(0.05), embeddings=zoo.sparse.rowwise_adagrad(0.1)
    )
    trained, _ = train(
        model, data, loss=_sequence_mse, optimizer=optimizer, epochs=1, batch_size=16, key=key
    )
    grads_of = jax.jit(lambda m, b: eqx.filter_grad(_sequence_mse)(m, b, None))
    expected, acc = model, jnp.zeros(30)
    state = zoo.TrainState(model, None, *(jnp.zeros((), jnp.int32) for _ in range(3)), key)
    order = np.asarray(state.epoch_order(64))
    for start in range(0, 64, 16):
        batch = {k: jnp.asarray(v[order[start : start + 16]]) for k, v in data.items()}
        grads = grads_of(expected, batch)
        g = grads.items.weight
        touched = jnp.any(g != 0, axis=1)  # the dense formula: untouched rows stay as they are
        acc = acc + jnp.where(touched, jnp.mean(g**2, axis=1), 0.0)
        table = expected.items.weight - 0.1 * g / (jnp.sqrt(acc)[:, None] + 1e-8)
        rest = jax.tree.map(
            lambda p, g: p - 0.05 * g, (expected.cell, expected.head), (grads.cell, grads.head)
        )
        expected = eqx.tree_at(lambda m: (m.items.weight, m.cell, m.head), expected, (table, *rest))
    assert tree_allclose(trained, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("embeddings", ["rowwise_adagrad", "sgd"])
@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
def test_the_trainers_fused_program_does_no_table_sized_work(on_nonfinite, embeddings):
    """The program zoo.train runs per chunk, with a sparse optimizer, is O(batch) too: the
    skip mode's `lax.cond` keeps the in-place table update, and so does the in-place path
    that SGD takes (its table's ref made and frozen inside the fused loop)."""
    optimizer = zoo.sparse.partition(
        dense=optax.adam(1e-3), embeddings=getattr(zoo.sparse, embeddings)(0.1)
    )
    rule = rule_for(optimizer, in_place=on_nonfinite == "raise")

    def init(key):
        model = BigModel(key)
        return initial_state(model, optimizer.init(model), key)

    state = eqx.filter_eval_shape(init, jax.random.key(0))
    # Shapes only (no 1e6-row allocation): the abstract arrays are the dynamic part.
    dynamic, static = eqx.partition(state, lambda x: isinstance(x, jax.ShapeDtypeStruct))
    loss = lambda model, batch, key: big_loss(model, batch)  # noqa: E731
    step = make_train_step(loss, optimizer, rule, skip_nonfinite=on_nonfinite == "skip")
    # As the trainer builds it: with on_nonfinite="raise" the model is checked after each
    # chunk, all but its tables.
    checked = rule.checked if on_nonfinite == "raise" else None
    programs = Programs(step, static, batch_size=64, check_model=checked)
    data = {
        "ids": jax.ShapeDtypeStruct((1000, 5), jnp.int32),
        "y": jax.ShapeDtypeStruct((1000,), jnp.float32),
    }
    args = (
        dynamic,
        eqx.filter_eval_shape(StepTotals.zeros),
        data,
        jax.ShapeDtypeStruct((1000,), jnp.int32),
        jax.ShapeDtypeStruct((), jnp.int32),
    )
    with jax.numpy_dtype_promotion("standard"):
        assert table_sized_ops(programs.run_steps, args) == []


class _Dot(eqx.Module):
    """A model of embedding tables alone: the check after each chunk, which leaves out the
    tables, then has nothing to read."""

    users: zoo.Embedding
    items: zoo.Embedding

    def __init__(self, key):
        user_key, item_key = jax.random.split(key)
        self.users = zoo.Embedding(50, 4, key=user_key)
        self.items = zoo.Embedding(40, 4, key=item_key)


def _dot_mse(model, batch, key):
    users, items = jax.vmap(model.users)(batch["user"]), jax.vmap(model.items)(batch["item"])
    return jnp.mean((jnp.sum(users * items, axis=-1) - batch["rating"]) ** 2)


@pytest.mark.parametrize("embeddings", ["sgd", "rowwise_adagrad", "lazy_adam"])
def test_a_model_of_tables_alone_trains_on_the_sparse_path(getkey, embeddings):
    optimizer = getattr(zoo.sparse, embeddings)(0.1)
    _, history = train(
        _Dot(getkey()), _ratings(getkey()), loss=_dot_mse, optimizer=optimizer, epochs=3,
        batch_size=32,
    )  # fmt: skip
    assert history["train"]["loss"][-1] < history["train"]["loss"][0]
