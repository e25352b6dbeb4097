"""zoo.train with sparse-embedding optimizers: the same as a hand-written sparse step."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import zoo
from zoo._training._programs import Programs, StepTotals, make_train_step
from zoo._training._rules import rule_for
from zoo._training._state import initial_state

from .helpers import tree_allclose
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
    trained, history = zoo.train(
        model, data, loss=_mse, optimizer=optimizer, epochs=2, batch_size=32, key=key
    )

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
    sparse_model, _ = zoo.train(
        model, data, loss=_mse, optimizer=sparse_opt, epochs=2, batch_size=32, key=key
    )
    dense_model, _ = zoo.train(
        model, data, loss=_mse, optimizer=optax.sgd(0.1), epochs=2, batch_size=32, key=key
    )
    assert tree_allclose(sparse_model, dense_model, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
def test_the_trainers_fused_program_does_no_table_sized_work(on_nonfinite):
    """The program zoo.train runs per chunk, with a sparse optimizer, is O(batch) too: the
    skip mode's `lax.cond` keeps the in-place table update."""
    optimizer = zoo.sparse.partition(
        dense=optax.adam(1e-3), embeddings=zoo.sparse.rowwise_adagrad(0.1)
    )
    rule = rule_for(optimizer)

    def init(key):
        model = BigModel(key)
        return initial_state(model, optimizer.init(model), key)

    state = eqx.filter_eval_shape(init, jax.random.key(0))
    # Shapes only (no 1e6-row allocation): the abstract arrays are the dynamic part.
    dynamic, static = eqx.partition(state, lambda x: isinstance(x, jax.ShapeDtypeStruct))
    loss = lambda model, batch, key: big_loss(model, batch)  # noqa: E731
    step = make_train_step(loss, optimizer, rule, skip_nonfinite=on_nonfinite == "skip")
    programs = Programs(step, static, batch_size=64)
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
