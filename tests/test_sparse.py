"""`zoo.sparse`: row gradients, sparse optimizers and O(batch) steps, checked against dense JAX."""

import os
import re
import subprocess
import sys
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import zoo
from zoo.sparse import SparseRows

from .helpers import as_numpy, tree_allclose

NUM_USERS, NUM_ITEMS, DIM = 13, 17, 4


class Recommender(eqx.Module):
    """Two tables; `items` is looked up twice per example (a positive and a negative bag)."""

    users: zoo.Embedding
    items: zoo.Embedding
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.users = zoo.Embedding(NUM_USERS, DIM, key=k1)
        self.items = zoo.Embedding(NUM_ITEMS, DIM, padding_idx=0, combiner="mean", key=k2)
        self.head = eqx.nn.Linear(DIM, DIM, key=k3)

    def __call__(self, user, positive, negative):
        u = self.head(self.users(user))
        return jnp.dot(u, self.items(positive)) - jnp.dot(u, self.items(negative))


def vmapped_loss(model, batch):
    scores = jax.vmap(model)(batch["user"], batch["positive"], batch["negative"])
    return jnp.mean(jax.nn.softplus(-scores))


def batched_loss(model, batch):
    """The same loss with no vmap: lookups of whole id arrays."""
    u = jax.vmap(model.head)(model.users(batch["user"]))
    scores = jnp.sum(u * (model.items(batch["positive"]) - model.items(batch["negative"])), -1)
    return jnp.mean(jax.nn.softplus(-scores))


def nested_vmap_loss(model, batch):
    """vmap over examples and, inside, over the two bags (given on axis 1)."""
    bags = jnp.stack([batch["positive"], batch["negative"]], axis=0)

    def per_example(user, bags):
        u = model.head(model.users(user))
        both = jax.vmap(lambda bag: jnp.dot(u, model.items(bag)), in_axes=1)(bags)
        return both[0] - both[1]

    return jnp.mean(jax.nn.softplus(-jax.vmap(per_example, in_axes=(0, 1))(batch["user"], bags)))


def make_batch(key, size=8, bag=3):
    """Random ids with many duplicates and some padding (item id 0)."""
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "user": jax.random.randint(k1, (size,), 0, 4),
        "positive": jax.random.randint(k2, (size, bag), 0, 6),
        "negative": jax.random.randint(k3, (size, bag), 0, NUM_ITEMS),
    }


def densify(rows: SparseRows) -> jax.Array:
    table = jnp.zeros((rows.num_rows, rows.values.shape[1]), rows.values.dtype)
    return table.at[rows.ids].add(rows.values, mode="drop")


def densified(grads):
    return jax.tree.map(
        lambda g: densify(g) if isinstance(g, SparseRows) else g,
        grads,
        is_leaf=zoo.sparse.is_sparse_rows,
    )


@pytest.mark.parametrize("loss_fn", [vmapped_loss, batched_loss, nested_vmap_loss])
def test_gradients_equal_jax_grad(getkey, loss_fn):
    model, batch = Recommender(getkey()), make_batch(getkey())
    loss, grads = eqx.filter_jit(zoo.sparse.value_and_grad(loss_fn))(model, batch)
    expected_loss, expected = eqx.filter_value_and_grad(loss_fn)(model, batch)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
    assert isinstance(grads.users.weight, SparseRows)
    assert isinstance(grads.items.weight, SparseRows)
    assert tree_allclose(densified(grads), expected, atol=1e-7)


def test_row_gradients_are_coalesced(getkey):
    model, batch = Recommender(getkey()), make_batch(getkey())
    _, grads = zoo.sparse.value_and_grad(vmapped_loss)(model, batch)
    rows = grads.items.weight
    looked_up = np.concatenate([as_numpy(batch["positive"]), as_numpy(batch["negative"])], 0)
    unique = np.setdiff1d(looked_up, [0])  # the padding id is left out
    ids = as_numpy(rows.ids)
    assert ids.shape == (looked_up.size,)  # static: every lookup of the table
    real = ids != NUM_ITEMS  # the rest are the out-of-range sentinel
    np.testing.assert_array_equal(ids[real], unique)  # each row once, in increasing order
    np.testing.assert_array_equal(as_numpy(rows.values)[~real], 0)


def test_has_aux_and_a_table_nested_in_a_list(getkey):
    keys = jax.random.split(getkey(), 2)
    model = [zoo.Embedding(9, 2, key=keys[0]), {"t": zoo.Embedding(5, 2, key=keys[1])}]
    ids = jnp.array([[1, 1, 8], [2, 3, 4]])

    def loss_fn(model, ids):
        a, b = model[0], model[1]["t"]
        out = jnp.sum(jax.vmap(a)(ids) ** 2) + jnp.sum(b(ids[1]) * b(ids[1, ::-1]))
        return out, {"out": out}

    (loss, aux), grads = zoo.sparse.value_and_grad(loss_fn, has_aux=True)(model, ids)
    (expected_loss, _), expected = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model, ids)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
    np.testing.assert_allclose(aux["out"], expected_loss, rtol=1e-6)
    assert tree_allclose(densified(grads), expected)


def scan_loss(model, batch):
    """Per example, a `lax.scan` over the bag positions, each looking up one positive and one
    negative item (a table looked up twice per scan step)."""

    def per_example(user, positive, negative):
        u = model.head(model.users(user))

        def body(total, ids):
            p, n = ids
            return total + jnp.dot(u, model.items(p[None])) - jnp.dot(u, model.items(n[None])), None

        return jax.lax.scan(body, 0.0, (positive, negative))[0]

    scores = jax.vmap(per_example)(batch["user"], batch["positive"], batch["negative"])
    return jnp.mean(jax.nn.softplus(-scores))


def unbatched_scan_loss(model, batch):
    """A scan over the batch's examples, no vmap: the lookups run inside the scan body."""

    def body(total, example):
        user, positive, negative = example
        return total + jax.nn.softplus(-model(user, positive, negative)), None

    examples = (batch["user"], batch["positive"], batch["negative"])
    return jax.lax.scan(body, 0.0, examples)[0] / batch["user"].shape[0]


def cond_loss(model, batch):
    """A `lax.cond` whose branches look up different tables with ids of different shapes."""
    extra = jax.lax.cond(
        batch["user"][0] > 1,
        lambda: jnp.sum(model.items(batch["negative"]) ** 2),
        lambda: jnp.sum(model.users(batch["user"][:3]) ** 2),
    )
    return vmapped_loss(model, batch) + 0.1 * extra


def checkpoint_loss(model, batch):
    return jax.checkpoint(vmapped_loss)(model, batch)


def nested_jit_loss(model, batch):
    return eqx.filter_jit(batched_loss)(model, batch)


ANYWHERE = [scan_loss, unbatched_scan_loss, cond_loss, checkpoint_loss, nested_jit_loss]


@pytest.mark.parametrize("loss_fn", ANYWHERE)
def test_gradients_of_lookups_anywhere_equal_jax_grad(getkey, loss_fn):
    model, batch = Recommender(getkey()), make_batch(getkey())
    loss, grads = eqx.filter_jit(zoo.sparse.value_and_grad(loss_fn))(model, batch)
    expected_loss, expected = eqx.filter_value_and_grad(loss_fn)(model, batch)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
    assert isinstance(grads.items.weight, SparseRows)
    assert tree_allclose(densified(grads), expected, atol=1e-7)


def test_lookup_inside_while_loop_is_a_clear_error(getkey):
    emb = zoo.Embedding(5, 2, key=getkey())

    def loss_fn(emb, ids):
        def body(carry):
            i, total = carry
            return i + 1, total + jnp.sum(emb(ids[i]))

        return jax.lax.while_loop(lambda c: c[0] < ids.shape[0], body, (0, 0.0))[1]

    with pytest.raises(ValueError, match=r"while_loop .* jax.lax.scan"):
        zoo.sparse.value_and_grad(loss_fn)(emb, jnp.array([1, 2]))


@pytest.mark.parametrize("embeddings", ["sgd", "rowwise_adagrad"])
@pytest.mark.parametrize("read", ["matmul", "shape"])
def test_reading_a_table_directly_names_the_table_and_the_fix(getkey, embeddings, read):
    model = Recommender(getkey())
    opt = zoo.sparse.partition(
        dense=optax.sgd(0.1), embeddings=getattr(zoo.sparse, embeddings)(0.1)
    )

    def tied_loss(model, batch):
        h = model.head(model.users(batch["user"][0]))
        if read == "shape":
            return jnp.sum(h) * model.items.weight.shape[0]
        return jnp.sum(h @ model.items.weight.T)  # weight tying: a dense read of the table

    step = jax.jit(zoo.sparse.value_and_update(tied_loss, opt))
    with pytest.raises((TypeError, AttributeError), match=r"model\.items is read whole.*densely"):
        step(model, opt.init(model), make_batch(getkey()))


def test_a_model_holding_a_ref_is_refused_with_the_fix(getkey):
    model = Recommender(getkey())
    opt = zoo.sparse.partition(dense=optax.sgd(0.1), embeddings=zoo.sparse.sgd(0.1))

    @jax.jit
    def step(model, opt_state, batch):
        with_ref = eqx.tree_at(lambda m: m.items.weight, model, jax.new_ref(model.items.weight))
        return zoo.sparse.value_and_update(vmapped_loss, opt)(with_ref, opt_state, batch)

    with pytest.raises(TypeError, match=r"jax.Ref at .*\.items\.weight.*jax.freeze"):
        step(model, opt.init(model), make_batch(getkey()))


def dense_reference(name, lr, eps):
    """The sparse optimizer's formula applied to a dense table gradient, every row."""

    def init(table):
        shape = table.shape[:1] if name == "rowwise_adagrad" else table.shape
        return jnp.zeros(shape, table.dtype)

    def update(table, grad, acc):
        if name == "sgd":
            return table - lr * grad, acc
        squares = jnp.square(grad)
        acc = acc + (jnp.mean(squares, -1) if name == "rowwise_adagrad" else squares)
        scale = jnp.sqrt(acc)[:, None] if name == "rowwise_adagrad" else jnp.sqrt(acc)
        return table - lr * grad / (scale + eps), acc

    return init, update


def dense_reference_step(loss_fn, update, reference, accs, batch):
    """One step of the dense formula: `update` on both tables, SGD(0.1) on the head."""
    grads = eqx.filter_grad(loss_fn)(reference, batch)
    users, acc_u = update(reference.users.weight, grads.users.weight, accs[0])
    items, acc_i = update(reference.items.weight, grads.items.weight, accs[1])
    head = jax.tree.map(lambda p, g: p - 0.1 * g, reference.head, grads.head)
    reference = eqx.tree_at(
        lambda m: (m.users.weight, m.items.weight, m.head), reference, (users, items, head)
    )
    return reference, (acc_u, acc_i)


def sparse_step(opt, loss_fn):
    @eqx.filter_jit(donate="all")
    def step(model, opt_state, batch):
        loss, grads = zoo.sparse.value_and_grad(loss_fn)(model, batch)
        updates, opt_state = opt.update(grads, opt_state, model)
        return zoo.sparse.apply_updates(model, updates), opt_state, loss

    return step


@pytest.mark.parametrize("name", ["sgd", "rowwise_adagrad", "adagrad"])
def test_exact_optimizers_equal_their_dense_formula(getkey, name):
    lr, eps = 0.3, 1e-6
    kwargs = {} if name == "sgd" else {"eps": eps}
    opt = zoo.sparse.partition(
        dense=optax.sgd(0.1), embeddings=getattr(zoo.sparse, name)(lr, **kwargs)
    )
    step = sparse_step(opt, vmapped_loss)
    model = Recommender(getkey())
    init, update = dense_reference(name, lr, eps)
    reference, accs = model, (init(model.users.weight), init(model.items.weight))
    opt_state = opt.init(model)
    for _ in range(4):
        batch = make_batch(getkey())
        reference, accs = dense_reference_step(vmapped_loss, update, reference, accs, batch)
        model, opt_state, _ = step(model, opt_state, batch)
    assert tree_allclose(model, reference, rtol=1e-5, atol=1e-6)
    if name != "sgd":
        state = opt_state.embeddings.sum_of_squares
        assert tree_allclose((state.users.weight, state.items.weight), accs, atol=1e-7)


def copied(tree):
    """A copy of every array: the steps donate their arguments."""
    return jax.tree.map(lambda x: jnp.array(x, copy=True) if eqx.is_array(x) else x, tree)


@pytest.mark.parametrize("loss_fn", [vmapped_loss, batched_loss, nested_vmap_loss, *ANYWHERE])
def test_in_place_sgd_equals_dense_sgd(getkey, loss_fn):
    """The table's own ref receives -lr * grad in the backward pass: duplicate ids, bags,
    padding, a table looked up twice, lookups in scan/cond/checkpoint/jit."""
    opt = zoo.sparse.partition(dense=optax.sgd(0.1), embeddings=zoo.sparse.sgd(0.3))

    @eqx.filter_jit(donate="all")
    def step(model, opt_state, batch):
        return zoo.sparse.value_and_update(loss_fn, opt)(model, opt_state, batch)

    reference = Recommender(getkey())
    model, opt_state = copied(reference), opt.init(reference)
    init, update = dense_reference("sgd", 0.3, 0.0)
    accs = (init(reference.users.weight), init(reference.items.weight))
    for _ in range(3):
        batch = make_batch(getkey())
        expected_loss = loss_fn(reference, batch)
        loss, model, opt_state = step(model, opt_state, batch)
        reference, accs = dense_reference_step(loss_fn, update, reference, accs, batch)
        np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
    assert tree_allclose(model, reference, rtol=1e-5, atol=1e-6)
    assert int(opt_state.embeddings.count) == 3


def test_in_place_sgd_is_bit_identical_to_the_floor(getkey):
    """One gather, one scatter-add of -lr * grad (duplicates uncoalesced): the same numbers."""
    table = jax.random.normal(getkey(), (50, 4))
    ids = jnp.concatenate([jax.random.randint(getkey(), (30,), 0, 50), jnp.array([7, 7, 7])])
    target = jax.random.normal(getkey(), (33, 4))
    emb = eqx.tree_at(lambda e: e.weight, zoo.Embedding(50, 4, key=getkey()), table)

    def loss_fn(emb, ids):
        return jnp.sum((jax.vmap(emb)(ids) - target) ** 2)

    @jax.jit
    def floor(table):
        rows_grad = jax.grad(lambda rows: jnp.sum((rows - target) ** 2))(table[ids])
        return table.at[ids].add(jnp.float32(-0.1) * rows_grad)

    opt = zoo.sparse.sgd(0.1)
    step = jax.jit(lambda e, s: zoo.sparse.value_and_update(loss_fn, opt)(e, s, ids))
    _, emb, _ = step(emb, opt.init(emb))
    np.testing.assert_array_equal(emb.weight, floor(table))


@pytest.mark.parametrize("bad_id", [-1, NUM_ITEMS])
def test_in_place_sgd_refuses_out_of_range_ids(getkey, bad_id):
    """The in-place gather trusts the Embedding's id check: that check must still fire."""
    model = Recommender(getkey())
    opt = zoo.sparse.partition(dense=optax.sgd(0.1), embeddings=zoo.sparse.sgd(0.1))
    batch = make_batch(getkey())
    batch["negative"] = batch["negative"].at[2, 1].set(bad_id)
    step = jax.jit(zoo.sparse.value_and_update(vmapped_loss, opt))
    with pytest.raises(Exception, match=r"ids must lie in \[0, num_embeddings\)"):
        jax.block_until_ready(step(model, opt.init(model), batch))


def test_in_place_sgd_with_a_schedule_and_aux(getkey):
    emb = zoo.Embedding(5, 2, key=getkey())
    opt = zoo.sparse.sgd(optax.linear_schedule(1.0, 0.0, transition_steps=2))

    def loss_fn(e, ids):
        total = jnp.sum(e(ids))
        return total, {"total": total}

    step = jax.jit(zoo.sparse.value_and_update(loss_fn, opt, has_aux=True))
    state, before = opt.init(emb), np.asarray(emb.weight)
    for _ in range(3):  # learning rates 1.0, 0.5, 0.0
        (loss, aux), emb, state = step(emb, state, jnp.array([1, 1]))
        assert loss == aux["total"]
    np.testing.assert_allclose(emb.weight - before, np.array([[0, 0], [-3, -3], *[[0, 0]] * 3]))


@pytest.mark.parametrize("name", ["rowwise_adagrad", "adagrad"])
@pytest.mark.parametrize("loss_fn", ANYWHERE)
def test_stateful_optimizers_with_lookups_anywhere_equal_their_dense_formula(getkey, name, loss_fn):
    lr, eps = 0.3, 1e-6
    opt = zoo.sparse.partition(dense=optax.sgd(0.1), embeddings=getattr(zoo.sparse, name)(lr, eps))

    @eqx.filter_jit(donate="all")
    def step(model, opt_state, batch):
        return zoo.sparse.value_and_update(loss_fn, opt)(model, opt_state, batch)

    reference = Recommender(getkey())
    model, opt_state = copied(reference), opt.init(reference)
    init, update = dense_reference(name, lr, eps)
    accs = (init(reference.users.weight), init(reference.items.weight))
    for _ in range(3):
        batch = make_batch(getkey())
        reference, accs = dense_reference_step(loss_fn, update, reference, accs, batch)
        _, model, opt_state = step(model, opt_state, batch)
    assert tree_allclose(model, reference, rtol=1e-5, atol=1e-6)


def numpy_lazy_adam(table, grad, touched, m, v, t, lr, b1, b2, eps):
    """PyTorch SparseAdam in NumPy: only `touched` rows move; bias correction by global step."""
    m, v, table = m.copy(), v.copy(), table.copy()
    m[touched] = b1 * m[touched] + (1 - b1) * grad[touched]
    v[touched] = b2 * v[touched] + (1 - b2) * grad[touched] ** 2
    step_size = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
    table[touched] -= step_size * m[touched] / (np.sqrt(v[touched]) + eps)
    return table, m, v


@pytest.mark.parametrize("lookup", ["vmap", "scan"])
def test_lazy_adam_equals_a_numpy_reference(getkey, lookup):
    lr, b1, b2, eps = 0.05, 0.8, 0.95, 1e-6
    emb = zoo.Embedding(NUM_ITEMS, DIM, padding_idx=0, combiner="sum", key=getkey())
    target = jax.random.normal(getkey(), (6, DIM))

    def loss_fn(emb, ids):
        if lookup == "vmap":
            return jnp.sum((jax.vmap(emb)(ids) - target) ** 2)
        # Each scan step looks the table up: the ids are collected from inside the scan.
        body = lambda total, x: (total + jnp.sum((emb(x[0]) - x[1]) ** 2), None)  # noqa: E731
        return jax.lax.scan(body, 0.0, (ids, target))[0]

    opt = zoo.sparse.lazy_adam(lr, b1=b1, b2=b2, eps=eps)
    step = sparse_step(opt, loss_fn)
    table = np.array(emb.weight, np.float64)
    m, v = np.zeros_like(table), np.zeros_like(table)
    state = opt.init(emb)
    for t in range(1, 6):
        ids = jax.random.randint(getkey(), (6, 3), 0, 7)  # duplicates and padding, few rows
        reference_emb = eqx.tree_at(lambda e: e.weight, emb, jnp.asarray(table, jnp.float32))
        grad = np.asarray(eqx.filter_grad(loss_fn)(reference_emb, ids).weight, np.float64)
        touched = np.setdiff1d(np.asarray(ids), [0])
        table, m, v = numpy_lazy_adam(table, grad, touched, m, v, t, lr, b1, b2, eps)
        emb, state, _ = step(emb, state, ids)
    np.testing.assert_allclose(emb.weight, table, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.mu.weight, m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.nu.weight, v, rtol=1e-5, atol=1e-7)
    assert int(state.count) == 5


def test_lazy_adam_keeps_float32_moments_for_a_bfloat16_table(getkey):
    # In bfloat16, 0.999 * v rounds back to v: bfloat16 moments would never decay.
    table16 = zoo.Embedding(NUM_ITEMS, DIM, combiner="sum", dtype=jnp.bfloat16, key=getkey())
    table32 = eqx.tree_at(lambda e: e.weight, table16, table16.weight.astype(jnp.float32))
    target = jax.random.normal(getkey(), (6, DIM))
    batches = [jax.random.randint(getkey(), (6, 3), 0, NUM_ITEMS) for _ in range(4)]

    def loss_fn(emb, ids):
        return jnp.sum((jax.vmap(emb)(ids).astype(jnp.float32) - target) ** 2)

    opt = zoo.sparse.lazy_adam(0.01)
    step = sparse_step(opt, loss_fn)
    trained = []
    for emb in (table16, table32):
        state = opt.init(emb)
        for ids in batches:
            emb, state, _ = step(emb, state, ids)
        trained.append((emb, state))
    (emb16, state16), (emb32, state32) = trained
    assert emb16.weight.dtype == jnp.bfloat16
    assert state16.mu.weight.dtype == state16.nu.weight.dtype == jnp.float32
    np.testing.assert_allclose(state16.nu.weight, state32.nu.weight, rtol=0.05, atol=1e-4)
    np.testing.assert_allclose(emb16.weight.astype(jnp.float32), emb32.weight, atol=0.02)


def test_schedule_learning_rate(getkey):
    emb = zoo.Embedding(5, 2, key=getkey())
    opt = zoo.sparse.sgd(optax.linear_schedule(1.0, 0.0, transition_steps=2))
    step = sparse_step(opt, lambda e, ids: jnp.sum(e(ids)))
    state, before = opt.init(emb), np.asarray(emb.weight)
    for _ in range(3):  # learning rates 1.0, 0.5, 0.0
        emb, state, _ = step(emb, state, jnp.array([1]))
    np.testing.assert_allclose(emb.weight - before, np.array([[0, 0], [-1.5, -1.5], *[[0, 0]] * 3]))


def test_state_is_a_pytree_of_arrays(getkey):
    model = Recommender(getkey())
    opt = zoo.sparse.partition(
        dense=optax.sgd(0.1, momentum=0.9), embeddings=zoo.sparse.lazy_adam(1e-2)
    )
    state = opt.init(model)
    leaves, treedef = jax.tree.flatten(state)
    assert leaves and all(isinstance(x, jax.Array) for x in leaves)
    restored = jax.tree.unflatten(
        treedef, [jnp.array(np.asarray(x)) for x in leaves]
    )  # a checkpoint
    batch = make_batch(getkey())
    _, grads = zoo.sparse.value_and_grad(vmapped_loss)(model, batch)
    updates, new = opt.update(grads, restored, model)
    expected_updates, expected = opt.update(grads, state, model)
    assert tree_allclose((densified(updates), new), (densified(expected_updates), expected))
    assert jax.tree.structure(new) == treedef


def test_trainer_predicate_and_dense_gradients_rejected(getkey):
    opt = zoo.sparse.partition(dense=optax.sgd(0.1), embeddings=zoo.sparse.sgd(0.1))
    assert isinstance(opt, zoo.sparse.SparseGradientTransformation)
    assert isinstance(zoo.sparse.rowwise_adagrad(0.1), zoo.sparse.SparseGradientTransformation)
    assert not isinstance(optax.sgd(0.1), zoo.sparse.SparseGradientTransformation)
    emb = zoo.Embedding(5, 2, key=getkey())
    tx = zoo.sparse.rowwise_adagrad(0.1)
    dense_grads = eqx.filter_grad(lambda e: jnp.sum(e(jnp.array([1]))))(emb)
    with pytest.raises(TypeError, match=r"zoo.sparse.partition\(dense="):
        tx.update(dense_grads, tx.init(emb))


# --- No O(table) work in a step ------------------------------------------------------------------

BIG = 1_000_003  # a table size that nothing else in the step has


class BigModel(eqx.Module):
    table: zoo.Embedding
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.table = zoo.Embedding(BIG, 8, padding_idx=0, combiner="mean", key=k1)
        self.head = eqx.nn.Linear(8, 1, key=k2)

    def __call__(self, ids):
        return self.head(self.table(ids))[0]


def big_loss(model, batch):
    return jnp.mean((jax.vmap(model)(batch["ids"]) - batch["y"]) ** 2)


def big_step(optimizer, *, whole_step: bool = False):
    """The step a user writes, sparse or (for `optax` optimizers) dense, and its arguments;
    with `whole_step`, `zoo.sparse.value_and_update` (in place for `zoo.sparse.sgd`)."""
    sparse = isinstance(optimizer, zoo.sparse.SparseGradientTransformation)
    grad_fn = zoo.sparse.value_and_grad if sparse else eqx.filter_value_and_grad
    apply = zoo.sparse.apply_updates if sparse else eqx.apply_updates

    def init(key):
        model = BigModel(key)
        return model, optimizer.init(model if sparse else eqx.filter(model, eqx.is_array))

    model, state = eqx.filter_eval_shape(init, jax.random.key(0))  # shapes only: no allocation
    batch = {
        "ids": jax.ShapeDtypeStruct((64, 5), jnp.int32),
        "y": jax.ShapeDtypeStruct((64,), jnp.float32),
    }

    def step(model, state, batch):
        if whole_step:
            loss, model, state = zoo.sparse.value_and_update(big_loss, optimizer)(
                model, state, batch
            )
            return model, state, loss
        loss, grads = grad_fn(big_loss)(model, batch)
        updates, state = optimizer.update(grads, state, model)
        return apply(model, updates), state, loss

    return step, (model, state, batch)


# Control flow (`while`, `conditional`) returns tuples that carry the table through in place;
# a copy of it would be a separate `copy` instruction and table-sized temporary memory.
HARMLESS_HLO = (
    "parameter",
    "scatter",
    "tuple",
    "get-tuple-element",
    "bitcast",
    "while",
    "conditional",
)
# A scatter into the table, the table's ref made and frozen again, and the ref read whole and
# written back around a scatter-add (the transpose of a batched gather into a ref): none copies
# the table when it is donated (a copy would show in the HLO and in the temporary memory,
# both checked below).
IN_PLACE_JAXPR = ("scatter", "scatter-add", "new_ref", "freeze", "get", "swap")
HLO_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%[\w.\-]+ = (?P<shape>.*?) (?P<op>[\w\-]+)\(")


def table_sized_ops(step, args) -> list[str]:
    """Every op of the step's jaxpr or compiled HLO that makes a table-sized array, except a
    scatter into a table, and the step's temporary memory if it is table-sized."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            params = [p for v in eqn.params.values() for p in (v if isinstance(v, tuple) else [v])]
            subjaxprs = [getattr(p, "jaxpr", p) for p in params]
            subjaxprs = [j for j in subjaxprs if isinstance(j, jax.extend.core.Jaxpr)]
            for sub in subjaxprs:
                walk(sub)
            big = any(BIG in getattr(v.aval, "shape", ()) for v in eqn.outvars)
            # zoo's native kernels write the table in place: their output aliases the table.
            aliased = eqn.primitive.name == "ffi_call" and eqn.params.get("input_output_aliases")
            if big and not subjaxprs and not aliased and eqn.primitive.name not in IN_PLACE_JAXPR:
                found.append(f"jaxpr: {eqn.primitive.name}")

    walk(jax.make_jaxpr(step)(*args).jaxpr)
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(*args).compile()
    for line in compiled.as_text().splitlines():
        match = HLO_INSTRUCTION.match(line)
        if match is None or f"[{BIG}" not in match["shape"]:
            continue
        in_place = (match["op"] == "fusion" and "calls=%wrapped_scatter" in line) or (
            match["op"] == "custom-call" and "output_to_operand_aliasing" in line
        )
        if match["op"] not in HARMLESS_HLO and not in_place:
            found.append(f"hlo: {line.strip()[:120]}")
    temp = compiled.memory_analysis().temp_size_in_bytes
    if temp >= BIG * 4:
        found.append(f"temporary memory: {temp} bytes")
    return found


@pytest.mark.parametrize("whole_step", [False, True])
@pytest.mark.parametrize("name", ["sgd", "rowwise_adagrad", "adagrad", "lazy_adam"])
def test_sparse_step_does_no_table_sized_work(name, whole_step):
    with jax.numpy_dtype_promotion("standard"):  # optax.adam mixes int and float
        opt = zoo.sparse.partition(
            dense=optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)),
            embeddings=getattr(zoo.sparse, name)(0.1),
        )
        step, args = big_step(opt, whole_step=whole_step)
        assert table_sized_ops(step, args) == []


def test_the_check_flags_the_dense_path():
    with jax.numpy_dtype_promotion("standard"):
        step, args = big_step(optax.adam(1e-3))
        found = table_sized_ops(step, args)
    assert any(f.startswith("jaxpr: broadcast_in_dim") for f in found)  # zeros((V, D))
    assert any(f.startswith("hlo:") for f in found)
    assert any(f.startswith("temporary memory") for f in found)


# Every way of reading rows, on every path -------------------------------------------------

READS = {
    "index": lambda w, ids: w[ids],
    "index_and_slice": lambda w, ids: w[ids, :],
    "at_get": lambda w, ids: w.at[ids].get(),
    "at_get_fill": lambda w, ids: w.at[ids].get(mode="fill", fill_value=0.0),
    "take": lambda w, ids: w.take(ids, axis=0),
    "jnp_take": lambda w, ids: jnp.take(w, ids, axis=0),
}


def reading_loss(read):
    """Rows read from the weight directly (ids with repeats and the padding id 0), besides an
    Embedding call of the same table, under vmap and outside it."""

    def loss_fn(model, batch):
        ids = batch["negative"]
        direct = read(model.items.weight, ids)  # (size, bag, dim)
        per_example = jax.vmap(lambda w_ids: read(model.items.weight, w_ids))(ids)
        u = jax.vmap(model.head)(model.users(batch["user"]))
        return jnp.mean(jnp.sin(jnp.einsum("bd,bkd->bk", u, direct + 2 * per_example))) + jnp.mean(
            jax.vmap(model)(batch["user"], batch["positive"], batch["negative"])
        )

    return loss_fn


@pytest.mark.parametrize("read", READS)
def test_every_way_of_reading_rows_gives_the_dense_gradient(getkey, read):
    model, batch = Recommender(getkey()), make_batch(getkey())
    loss_fn = reading_loss(READS[read])
    loss, grads = jax.jit(zoo.sparse.value_and_grad(loss_fn))(model, batch)
    expected_loss, expected = eqx.filter_value_and_grad(loss_fn)(model, batch)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
    assert tree_allclose(densified(grads), expected, atol=1e-6)


@pytest.mark.parametrize("read", READS)
def test_every_way_of_reading_rows_steps_in_place_as_dense_sgd(getkey, read):
    loss_fn = reading_loss(READS[read])
    opt = zoo.sparse.partition(dense=optax.sgd(0.1), embeddings=zoo.sparse.sgd(0.3))
    step = jax.jit(zoo.sparse.value_and_update(loss_fn, opt))
    reference = Recommender(getkey())
    model, batch = copied(reference), make_batch(getkey())
    _, model, _ = step(model, opt.init(model), batch)
    init, update = dense_reference("sgd", 0.3, 0.0)
    accs = (init(reference.users.weight), init(reference.items.weight))
    reference, _ = dense_reference_step(loss_fn, update, reference, accs, batch)
    assert tree_allclose(model, reference, rtol=1e-5, atol=1e-6)


# jnp.take(weight, ids, axis=0) in each mode, and the method call that reads the same rows (jnp.take
# wraps negative ids in "fill" mode, not in "clip" mode, and fills NaN by default).
TAKES = {
    None: (
        lambda w, ids: jnp.take(w, ids, axis=0),
        lambda w, ids: w.at[ids].get(mode="fill"),
    ),
    "fill": (
        lambda w, ids: jnp.take(w, ids, axis=0, mode="fill", fill_value=0.5),
        lambda w, ids: w.at[ids].get(mode="fill", fill_value=0.5),
    ),
    "clip": (
        lambda w, ids: jnp.take(w, ids, axis=0, mode="clip"),
        lambda w, ids: w.at[ids].get(mode="clip", wrap_negative_indices=False),
    ),
}


def taking_loss(take):
    """Rows taken from the item table directly and under vmap, next to Embedding calls."""

    def loss_fn(model, batch):
        u = jax.vmap(model.head)(model.users(batch["user"]))
        direct = take(model.items.weight, batch["take"])  # (size, bag, dim)
        per_example = jax.vmap(lambda ids: take(model.items.weight, ids))(batch["take"])
        rows = direct + 2 * per_example + model.items(batch["positive"])[:, None]
        return jnp.mean(jnp.sin(jnp.einsum("bd,bkd->bk", u, rows)))

    return loss_fn


def taking_batch(key, mode):
    """`make_batch` with ids to take: in range (negative ones wrap) without a mode, and out of
    range on both sides with "fill" and "clip"."""
    batch = make_batch(key)
    extra = [-1, -NUM_ITEMS, NUM_ITEMS - 1, 0, 5, -3, 2, 1]
    if mode is not None:
        extra = [NUM_ITEMS, -1, 40, -NUM_ITEMS - 1, 3, -40, NUM_ITEMS - 1, 0]
    batch["take"] = batch["negative"].at[:, 0].set(jnp.array(extra))
    return batch


@pytest.mark.parametrize("embeddings", ["sgd", "rowwise_adagrad", "lazy_adam"])
@pytest.mark.parametrize("mode", TAKES)
def test_jnp_take_of_rows_steps_as_the_method_and_the_dense_formula(getkey, mode, embeddings):
    # jnp.take converts the table inside its own jit, where no method of the stand-in sees
    # the ids: zoo.sparse finds the conversion in a trace of the loss and reads the rows
    # through the stand-in, in the gather's mode (docs/sparse.md, "Reading a table inside
    # the loss"). The in-place path (sgd) and the recorded one (the others) alike.
    take, method = (taking_loss(t) for t in TAKES[mode])
    opt = zoo.sparse.partition(
        dense=optax.sgd(0.1), embeddings=getattr(zoo.sparse, embeddings)(0.3)
    )
    reference, batch = Recommender(getkey()), taking_batch(getkey(), mode)
    steps = []
    for loss_fn in (take, method):
        model = copied(reference)
        step = jax.jit(zoo.sparse.value_and_update(loss_fn, opt))
        loss, model, _ = step(model, opt.init(model), batch)
        steps.append((loss, model))
    np.testing.assert_allclose(steps[0][0], take(reference, batch), rtol=1e-6)
    np.testing.assert_allclose(steps[0][0], steps[1][0], rtol=1e-6)
    assert tree_allclose(steps[0][1], steps[1][1], rtol=1e-6, atol=1e-7)
    if embeddings != "lazy_adam":  # (which has no dense formula)
        init, update = dense_reference(embeddings, 0.3, 1e-8)
        accs = (init(reference.users.weight), init(reference.items.weight))
        expected, _ = dense_reference_step(take, update, reference, accs, batch)
        assert tree_allclose(steps[0][1], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", TAKES)
def test_jnp_take_of_rows_gives_the_dense_gradient(getkey, mode):
    loss_fn = taking_loss(TAKES[mode][0])
    model, batch = Recommender(getkey()), taking_batch(getkey(), mode)
    loss, grads = jax.jit(zoo.sparse.value_and_grad(loss_fn))(model, batch)
    expected_loss, expected = eqx.filter_value_and_grad(loss_fn)(model, batch)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
    assert tree_allclose(densified(grads), expected, atol=1e-6)


@pytest.mark.parametrize("embeddings", ["sgd", "rowwise_adagrad"])
@pytest.mark.parametrize("loss_fn", [vmapped_loss, scan_loss])
def test_a_loss_without_jnp_take_compiles_to_the_program_it_did(
    getkey, loss_fn, embeddings, monkeypatch
):
    # Every sparse path traces the loss once more to look for jnp.take; where there is none,
    # the loss is called as it is: the lowered step is the one without that trace.
    model, batch = Recommender(getkey()), make_batch(getkey())
    opt = zoo.sparse.partition(
        dense=optax.sgd(0.1), embeddings=getattr(zoo.sparse, embeddings)(0.1)
    )

    def lowered() -> str:
        step = jax.jit(zoo.sparse.value_and_update(loss_fn, opt))
        return re.sub(r"0x[0-9a-f]+", "", step.lower(model, opt.init(model), batch).as_text())

    probed = lowered()
    monkeypatch.setattr("zoo.sparse._in_place.reading_rows", lambda fn: fn)
    monkeypatch.setattr("zoo.sparse._grad.reading_rows", lambda fn: fn)
    assert probed == lowered()


def test_jnp_take_inside_checkpoint_is_read_and_inside_scan_refused_naming_the_method(getkey):
    model, batch = Recommender(getkey()), make_batch(getkey())

    def checkpointed(take):
        def loss_fn(model, batch):
            rows = jax.checkpoint(lambda ids: jnp.sin(take(model.items.weight, ids)))
            return jnp.sum(rows(batch["negative"])) + jnp.sum(model.users(batch["user"]) ** 2)

        return loss_fn

    take = checkpointed(lambda w, ids: jnp.take(w, ids, axis=0))
    method = checkpointed(lambda w, ids: w.take(ids, axis=0))
    for name in ("sgd", "rowwise_adagrad"):
        opt = zoo.sparse.partition(dense=optax.sgd(0.1), embeddings=getattr(zoo.sparse, name)(0.3))
        loss, stepped, _ = jax.jit(zoo.sparse.value_and_update(take, opt))(
            copied(model), opt.init(model), batch
        )
        loss2, expected, _ = jax.jit(zoo.sparse.value_and_update(method, opt))(
            copied(model), opt.init(model), batch
        )
        np.testing.assert_allclose(loss, loss2, rtol=1e-6)
        assert tree_allclose(stepped, expected, rtol=1e-6, atol=1e-7)

    def scanned(model, batch):
        def body(total, ids):
            return total + jnp.sum(jnp.take(model.items.weight, ids, axis=0)), None

        return jax.lax.scan(body, 0.0, batch["negative"])[0]

    pattern = r"model\.items is converted to an array.*inside `scan`.*weight\.take\(ids, axis=0\)"
    opt = zoo.sparse.partition(dense=optax.sgd(0.1), embeddings=zoo.sparse.sgd(0.1))
    with pytest.raises(TypeError, match=pattern):
        jax.jit(zoo.sparse.value_and_grad(scanned))(model, batch)
    with pytest.raises(TypeError, match=pattern):
        jax.jit(zoo.sparse.value_and_update(scanned, opt))(model, opt.init(model), batch)


def test_a_fill_read_of_out_of_range_ids_reads_the_fill_value_and_moves_no_row(getkey):
    emb = zoo.Embedding(6, 2, key=getkey())
    ids = jnp.array([1, 9, -8, 1])

    def loss_fn(emb, ids):
        return jnp.sum(emb.weight.at[ids].get(mode="fill", fill_value=0.5) ** 2)

    for opt in (zoo.sparse.sgd(0.1), zoo.sparse.lazy_adam(0.1)):
        loss, new, _ = jax.jit(zoo.sparse.value_and_update(loss_fn, opt))(emb, opt.init(emb), ids)
        np.testing.assert_allclose(loss, 2 * jnp.sum(emb.weight[1] ** 2) + 4 * 0.25, rtol=1e-6)
        moved = np.flatnonzero(np.any(np.asarray(new.weight != emb.weight), axis=1))
        np.testing.assert_array_equal(moved, [1])


WHOLE_READS = {
    "matmul": lambda w, h: jnp.sum(h @ w.T),
    "square": lambda w, h: jnp.sum(h) + jnp.sum(jnp.square(w)),
    "jnp_take_flat": lambda w, h: jnp.sum(h) + jnp.sum(jnp.take(w, jnp.array([1]))),
    "jnp_take_columns": lambda w, h: jnp.sum(h) + jnp.sum(jnp.take(w, jnp.array([1]), axis=1)),
    "times": lambda w, h: jnp.sum(h) + jnp.sum(w * 2.0),
    "slice": lambda w, h: jnp.sum(h) + jnp.sum(w[:3]),
    "column": lambda w, h: jnp.sum(h) + jnp.sum(w[jnp.array([1]), 0]),
    "shape": lambda w, h: jnp.sum(h) * w.shape[0],
}


@pytest.mark.parametrize("embeddings", ["sgd", "rowwise_adagrad"])
@pytest.mark.parametrize("read", WHOLE_READS)
def test_a_whole_table_read_names_the_table_and_both_ways_out(getkey, embeddings, read):
    model = Recommender(getkey())
    opt = zoo.sparse.partition(
        dense=optax.sgd(0.1), embeddings=getattr(zoo.sparse, embeddings)(0.1)
    )

    def loss_fn(model, batch):
        return WHOLE_READS[read](model.items.weight, model.head(model.users(batch["user"][0])))

    step = jax.jit(zoo.sparse.value_and_update(loss_fn, opt))
    pattern = r"model\.items is read whole.*weight\[ids\].*densely"
    with pytest.raises((TypeError, AttributeError), match=pattern):
        step(model, opt.init(model), make_batch(getkey()))


# optax interop -----------------------------------------------------------------------------


def test_global_norm_and_clipping_see_only_the_values(getkey):
    model, batch = Recommender(getkey()), make_batch(getkey())
    _, sparse_grads = zoo.sparse.value_and_grad(vmapped_loss)(model, batch)
    _, dense_grads = eqx.filter_value_and_grad(vmapped_loss)(model, batch)
    norm = optax.tree.norm(dense_grads)
    np.testing.assert_allclose(zoo.sparse.global_norm(sparse_grads), norm, rtol=1e-6)
    clip = zoo.sparse.clip_by_global_norm(0.5 * float(norm))
    clipped, _ = clip.update(sparse_grads, clip.init(model))
    expected = jax.tree.map(lambda g: 0.5 * g, dense_grads)
    assert tree_allclose(densified(clipped), expected, rtol=1e-5, atol=1e-7)
    # Chained in front of a partition: the whole model's gradient is clipped, then SGD.
    opt = zoo.sparse.chain(
        zoo.sparse.clip_by_global_norm(0.5 * float(norm)),
        zoo.sparse.partition(dense=optax.sgd(1.0), embeddings=zoo.sparse.sgd(1.0)),
    )
    step = jax.jit(zoo.sparse.value_and_update(vmapped_loss, opt))
    _, stepped, _ = step(copied(model), opt.init(model), batch)
    reference = jax.tree.map(lambda p, g: p - g, eqx.filter(model, eqx.is_inexact_array), expected)
    assert tree_allclose(eqx.filter(stepped, eqx.is_inexact_array), reference, rtol=1e-5, atol=1e-6)


def test_clipping_as_the_embeddings_side_of_a_partition(getkey):
    model, batch = Recommender(getkey()), make_batch(getkey())
    opt = zoo.sparse.partition(
        dense=optax.sgd(0.0),
        embeddings=zoo.sparse.chain(zoo.sparse.clip_by_global_norm(1e-3), zoo.sparse.sgd(1.0)),
    )
    _, grads = zoo.sparse.value_and_grad(vmapped_loss)(model, batch)
    updates, _ = opt.update(grads, opt.init(model), model)
    tables = (updates.users.weight, updates.items.weight)
    np.testing.assert_allclose(zoo.sparse.global_norm(tables), 1e-3, rtol=1e-5)


def test_dense_table_gradients_and_multi_steps_are_refused_with_the_reason(getkey):
    model, batch = Recommender(getkey()), make_batch(getkey())
    opt = zoo.sparse.partition(dense=optax.adam(1e-3), embeddings=zoo.sparse.rowwise_adagrad(0.1))
    dense_grads = eqx.filter_grad(vmapped_loss)(model, batch)
    with pytest.raises(TypeError, match=r"grads\.users\.weight.*zoo\.sparse\.value_and_grad"):
        opt.update(dense_grads, opt.init(model), model)
    multi = optax.MultiSteps(optax.adam(1e-3), every_k_schedule=4)
    with pytest.raises(TypeError, match=r"dense"):  # (its annotation, or the check)
        zoo.sparse.partition(dense=multi, embeddings=zoo.sparse.sgd(0.1))
    hidden = zoo.sparse.partition(
        dense=optax.chain(optax.clip(1.0), multi.gradient_transformation()),
        embeddings=zoo.sparse.sgd(0.1),
    )
    with pytest.raises(TypeError, match=r"dense must not be optax\.MultiSteps.*every step"):
        hidden.init(model)


# Invariants where the objects are made ------------------------------------------------------


def test_sparse_rows_check_their_ids():
    values = jnp.ones((2, 3))
    with pytest.raises(ValueError, match=r"SparseRows.* from -1 to -1"):
        SparseRows(jnp.array([1, -1]), values, 5)
    with pytest.raises(ValueError, match=r"SparseRows.* from 7 to 7"):
        SparseRows(jnp.array([7, 5]), values, 5)
    with pytest.raises(TypeError, match="ids"):
        SparseRows(jnp.array([1.0, 2.0]), values, 5)
    apply = jax.jit(
        lambda ids: zoo.sparse.apply_updates(jnp.zeros((5, 3)), SparseRows(ids, values, 5))
    )
    np.testing.assert_array_equal(
        apply(jnp.array([1, 5])).sum(axis=1), [0, 3, 0, 0, 0]
    )  # 5: sentinel
    with pytest.raises(Exception, match=r"SparseRows.* from -1 to -1"):
        jax.block_until_ready(apply(jnp.array([1, -1])))


@pytest.mark.parametrize("name", ["sgd", "rowwise_adagrad", "adagrad", "lazy_adam"])
def test_a_schedule_going_negative_is_refused_before_the_step(getkey, name):
    emb = zoo.Embedding(6, 2, key=getkey())
    opt = getattr(zoo.sparse, name)(optax.linear_schedule(0.1, -0.1, transition_steps=2))
    step = jax.jit(zoo.sparse.value_and_update(lambda e, i: jnp.sum(jax.vmap(e)(i)), opt))
    state, ids = opt.init(emb), jnp.array([1, 2])
    for _ in range(2):  # rates 0.1 and 0.0
        _, emb, state = step(emb, state, ids)
    with pytest.raises(Exception, match=rf"learning_rate of zoo.sparse.{name}.* -0.1 .*>= 0"):
        jax.block_until_ready(step(emb, state, ids))


@pytest.mark.parametrize("has_aux", [False, True])
@pytest.mark.parametrize("name", ["sgd", "rowwise_adagrad", "lazy_adam"])
def test_every_path_refuses_a_loss_that_is_not_a_scalar(getkey, name, has_aux):
    """A per-example loss would be stepped on by its sum: the in-place SGD step, the coalesced
    step and the gradients alone refuse it, as `jax.grad` does."""
    emb = zoo.Embedding(6, 2, key=getkey())
    opt, ids = getattr(zoo.sparse, name)(0.1), jnp.array([1, 2])

    def per_example(e, i):
        losses = jax.vmap(e)(i).sum(-1)
        return (losses, {"ids": i}) if has_aux else losses

    step = jax.jit(zoo.sparse.value_and_update(per_example, opt, has_aux=has_aux))
    with pytest.raises(TypeError, match="scalar"):
        step(emb, opt.init(emb), ids)
    with pytest.raises(TypeError, match="scalar"):
        zoo.sparse.value_and_grad(per_example, has_aux=has_aux)(emb, ids)


@pytest.mark.parametrize("name", ["sgd", "rowwise_adagrad", "adagrad", "lazy_adam"])
def test_an_empty_batch_changes_nothing(getkey, name):
    emb = zoo.Embedding(6, 2, key=getkey())
    opt = getattr(zoo.sparse, name)(0.1)
    step = jax.jit(zoo.sparse.value_and_update(lambda e, i: jnp.sum(jax.vmap(e)(i)), opt))
    loss, new, _ = step(emb, opt.init(emb), jnp.zeros((0,), jnp.int32))
    assert loss == 0
    np.testing.assert_array_equal(new.weight, emb.weight)


def vmap_of_cond_loss(emb, ids):
    looked_up = lambda i: jax.lax.cond(i % 2 == 0, lambda: jnp.sum(emb(i) ** 2), lambda: 0.0)  # noqa: E731
    return jnp.sum(jax.vmap(looked_up)(ids))


def test_a_lookup_under_vmap_of_cond(getkey):
    """In place, it is the dense step; with per-row state, it is refused by name."""
    emb, ids = zoo.Embedding(6, 2, key=getkey()), jnp.array([1, 2, 4, 4])
    opt = zoo.sparse.sgd(0.1)
    _, new, _ = jax.jit(zoo.sparse.value_and_update(vmap_of_cond_loss, opt))(
        emb, opt.init(emb), ids
    )
    expected = emb.weight - 0.1 * eqx.filter_grad(vmap_of_cond_loss)(emb, ids).weight
    np.testing.assert_allclose(new.weight, expected, rtol=1e-6)
    for name in ["rowwise_adagrad", "lazy_adam"]:
        opt = getattr(zoo.sparse, name)(0.1)
        step = jax.jit(zoo.sparse.value_and_update(vmap_of_cond_loss, opt))
        with pytest.raises(ValueError, match=r"jax.lax.cond under jax.vmap.*jnp.where.*sgd"):
            step(emb, opt.init(emb), ids)


@pytest.mark.parametrize("path", ["sgd", "rowwise_adagrad", "dense"])
def test_an_out_of_range_id_under_jit_names_the_table_and_the_ids(getkey, path):
    model, batch = Recommender(getkey()), make_batch(getkey())
    batch["negative"] = batch["negative"].at[2, 1].set(NUM_ITEMS + 4).at[3, 0].set(NUM_ITEMS + 1)
    if path == "dense":
        step = eqx.filter_jit(eqx.filter_value_and_grad(vmapped_loss))
        args, table = (model, batch), rf"zoo.Embedding\({NUM_ITEMS}, {DIM}\)"
    else:
        opt = zoo.sparse.partition(dense=optax.sgd(0.1), embeddings=getattr(zoo.sparse, path)(0.1))
        step = jax.jit(zoo.sparse.value_and_update(vmapped_loss, opt))
        args, table = (model, opt.init(model), batch), r"model\.items"
    expected = (
        rf"{table}: ids must lie in \[0, num_embeddings\) = \[0, {NUM_ITEMS}\)"
        rf".* from {NUM_ITEMS + 1} to {NUM_ITEMS + 4}"
    )
    with pytest.raises(Exception, match=expected) as error:
        jax.block_until_ready(step(*args))
    lines = str(error.value).splitlines()
    assert re.search(expected, lines[-1])
    # Beside the Python stack of the call (indented lines, as deep as the caller's), the
    # message is two lines: JAX's header and the error itself.
    prose = [line for line in lines if not line.startswith(" ")]
    assert len(prose) <= 2, prose


EQX_NAN_SCRIPT = """
import equinox as eqx, jax, jax.numpy as jnp, numpy as np, optax, zoo
emb = zoo.Embedding(5, 2, key=jax.random.key(0))
before = np.asarray(emb.weight)
loss = lambda e, i: jnp.sum(jax.vmap(e)(i))
steps = {"dense": lambda ids: eqx.filter_jit(eqx.filter_grad(loss))(emb, ids).weight}
for name in ("sgd", "rowwise_adagrad", "lazy_adam"):
    opt = getattr(zoo.sparse, name)(0.1)
    step = jax.jit(zoo.sparse.value_and_update(loss, opt))
    steps[name] = lambda ids, step=step, opt=opt: step(emb, opt.init(emb), ids)[1].weight
rows = lambda ids: zoo.sparse.SparseRows(ids, jnp.ones((2, 2)), 5)
steps["SparseRows"] = jax.jit(lambda ids: zoo.sparse.apply_updates(emb.weight, rows(ids)))
for name, step in steps.items():
    for ids, bad in ((jnp.array([1, 7]), "from 7 to 7"), (jnp.array([1, -2]), "from -2 to -2")):
        try:
            out = np.asarray(jax.block_until_ready(step(ids)))
        except Exception as error:
            assert bad in str(error).splitlines()[-1], (name, error)
        else:
            raise AssertionError(f"{name} not refused; got {out}, the table was {before}")
print("refused")
"""


@pytest.mark.slow
def test_ids_are_checked_whatever_equinoxs_error_mode():
    env = os.environ | {"EQX_ON_ERROR": "nan"}
    done = subprocess.run(
        [sys.executable, "-c", EQX_NAN_SCRIPT], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0 and "refused" in done.stdout, done.stderr[-2000:]


def test_optax_and_equinox_tree_functions_refuse_sparse_gradients(getkey):
    """Never silently wrong: each would count or scale the integer ids of a SparseRows (before,
    `optax.global_norm` gave 7.3 for a dense norm of 1)."""
    model, batch = Recommender(getkey()), make_batch(getkey())
    _, grads = zoo.sparse.value_and_grad(vmapped_loss)(model, batch)
    params = eqx.filter(model, eqx.is_inexact_array)
    # As users run them: JAX's standard dtype promotion (the tests' strict one would refuse
    # integer ids here on its own).
    with warnings.catch_warnings(), jax.numpy_dtype_promotion("standard"):
        warnings.simplefilter("ignore", DeprecationWarning)  # optax.global_norm: an old name
        with pytest.raises((TypeError, NotImplementedError)):
            optax.global_norm(grads)
    numeric = {
        "optax.tree.norm": lambda: optax.tree.norm(grads),
        "optax.clip_by_global_norm": lambda: optax.clip_by_global_norm(1.0).update(
            grads, optax.EmptyState()
        ),
        "optax.tree.scale": lambda: optax.tree.scale(0.5, grads),
        "optax.tree.add": lambda: optax.tree.add(grads, grads),
        "optax.adam": lambda: optax.adam(1e-3).update(grads, optax.adam(1e-3).init(grads)),
    }
    for name, call in numeric.items():
        with jax.numpy_dtype_promotion("standard"), pytest.raises((TypeError, NotImplementedError)):
            call()
            pytest.fail(f"{name} accepted sparse gradients")
    # Applying updates: the error names the function to use, or the SparseRows in the way.
    with pytest.raises(TypeError, match=r"zoo\.sparse\.apply_updates"):
        optax.apply_updates(params, grads)
    with pytest.raises(ValueError, match="SparseRows"):
        eqx.apply_updates(model, grads)
    assert grads.items.weight.ids.dtype == jnp.int32  # the ids themselves read as integers
    # What zoo's functions give instead: the dense gradient's norm and update.
    dense = eqx.filter_grad(vmapped_loss)(model, batch)
    np.testing.assert_allclose(zoo.sparse.global_norm(grads), optax.tree.norm(dense), rtol=1e-6)
    stepped = zoo.sparse.apply_updates(model, grads)
    assert tree_allclose(stepped, eqx.apply_updates(model, dense), rtol=1e-6, atol=1e-7)


def test_row_reads_refuse_host_ids_that_jax_would_wrap(getkey):
    emb = zoo.Embedding(6, 2, key=getkey())
    ids = np.array([1, 2**32 + 3])  # int64: stored by JAX as int32, it would be row 3

    def loss_fn(emb, _):
        return jnp.sum(emb.weight[ids])

    opt = zoo.sparse.sgd(0.1)
    with pytest.raises(ValueError, match=r"ids must hold integers that fit int32.* 4294967299"):
        zoo.sparse.value_and_grad(loss_fn)(emb, None)
    with pytest.raises(ValueError, match=r"ids must hold integers that fit int32"):
        zoo.sparse.value_and_update(loss_fn, opt)(emb, opt.init(emb), None)
