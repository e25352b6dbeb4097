"""`zoo.Embedding`: shapes, bags, padding, init, errors (eager and jitted), vmap, dense training."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import zoo

from .helpers import as_numpy


@pytest.mark.parametrize("shape", [(), (3,), (2, 5), (2, 3, 4)])
def test_lookup_shapes(getkey, shape):
    emb = zoo.Embedding(11, 4, key=getkey())
    ids = jax.random.randint(getkey(), shape, 0, 11)
    out = emb(ids)
    assert out.shape == (*shape, 4)
    np.testing.assert_array_equal(out, as_numpy(emb.weight)[as_numpy(ids)])


@pytest.mark.parametrize("combiner", ["sum", "mean"])
def test_bags_with_padding(getkey, combiner):
    emb = zoo.Embedding(6, 3, padding_idx=0, combiner=combiner, key=getkey())
    ids = jnp.array([[1, 2, 0], [0, 0, 0], [4, 4, 5]])
    out = emb(ids)
    w = as_numpy(emb.weight)
    sums = np.stack([w[1] + w[2], np.zeros(3), 2 * w[4] + w[5]])
    expected = sums if combiner == "sum" else sums / np.array([[2.0], [1.0], [3.0]])
    assert out.shape == (3, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_padding_row_is_zero_and_gets_no_gradient(getkey):
    emb = zoo.Embedding(5, 2, padding_idx=3, key=getkey())
    np.testing.assert_array_equal(emb.weight[3], 0)
    emb = eqx.tree_at(lambda e: e.weight, emb, jnp.ones((5, 2)))  # a trained padding row
    ids = jnp.array([3, 1, 3])
    np.testing.assert_array_equal(emb(ids)[jnp.array([0, 2])], 0)
    grad = eqx.filter_grad(lambda e: jnp.sum(e(ids)))(emb)
    np.testing.assert_array_equal(grad.weight, np.array([[0, 0], [1, 1], [0, 0], [0, 0], [0, 0]]))


def test_init_default_and_custom(getkey):
    emb = zoo.Embedding(4000, 64, key=getkey())
    assert emb.weight.dtype == jnp.float32
    assert abs(float(jnp.std(emb.weight)) - 1 / 8) < 0.01
    ones = zoo.Embedding(3, 2, init=jax.nn.initializers.ones, dtype=jnp.bfloat16, key=getkey())
    assert ones.weight.dtype == jnp.bfloat16
    np.testing.assert_array_equal(ones.weight.astype(jnp.float32), 1)


def test_vmap_and_jit(getkey):
    emb = zoo.Embedding(10, 2, combiner="sum", key=getkey())
    ids = jax.random.randint(getkey(), (7, 3), 0, 10)
    np.testing.assert_allclose(jax.vmap(emb)(ids), emb(ids), rtol=1e-6)
    np.testing.assert_allclose(eqx.filter_jit(lambda e, i: e(i))(emb, ids), emb(ids), rtol=1e-6)


@pytest.mark.parametrize("bad", [-1, 10])
def test_out_of_range_ids_eager(getkey, bad):
    emb = zoo.Embedding(10, 2, key=getkey())
    with pytest.raises(ValueError, match=r"ids must lie in \[0, num_embeddings\) = \[0, 10\)"):
        emb(jnp.array([1, bad]))


@pytest.mark.parametrize("bad", [-1, 10])
def test_out_of_range_ids_under_jit_and_vmap_raise_at_run_time(getkey, bad):
    emb = zoo.Embedding(10, 2, key=getkey())
    ids = jnp.array([1, bad])
    lookup = eqx.filter_jit(lambda e, i: e(i))
    lookup(emb, jnp.array([1, 2]))  # valid ids pass
    # The table and the offending ids, in the last line of the message (JAX puts the stack
    # of the call before it).
    expected = (
        rf"zoo.Embedding\(10, 2\): ids must lie in \[0, num_embeddings\) .* from {bad} to {bad}"
    )
    for run in (
        lambda: lookup(emb, ids),
        lambda: jax.vmap(emb)(ids),
        lambda: jax.jit(lambda i: emb(i))(ids),
    ):
        with pytest.raises(Exception, match=expected) as error:
            jax.block_until_ready(run())
        assert re.search(expected, str(error.value).splitlines()[-1])


def test_id_checks_that_agree_over_a_mesh_report_the_range_of_every_example(getkey):
    # Inside `jax.shard_map` (zoo's routed step) the check is collective, so that every device
    # raises together; it reports the same table and range as the check on one device, and
    # passes valid ids through unchanged. (8 devices: tests/test_distributed.py.)
    from zoo._nn._embedding import id_checks_agree_over

    emb = zoo.Embedding(10, 2, key=getkey())
    mesh = jax.sharding.Mesh(jax.devices()[:1], ("data",))

    def lookup(ids):
        with id_checks_agree_over(("data",)):
            return jax.vmap(emb)(ids)

    # check_vma=False as in zoo's routed step: the check's error branch does not vary.
    sharded = jax.shard_map(
        lookup, mesh=mesh, in_specs=P("data"), out_specs=P("data"), check_vma=False
    )
    run = jax.jit(sharded)
    good = jnp.array([[1, 2], [3, 9]])
    np.testing.assert_array_equal(run(good), jax.vmap(emb)(good))
    expected = r"zoo.Embedding\(10, 2\): ids must lie in \[0, num_embeddings\) .* from -3 to 12"
    with pytest.raises(jax.errors.JaxRuntimeError, match=expected) as error:
        jax.block_until_ready(run(jnp.array([[1, 12], [3, 4], [-3, 0]])))
    assert re.search(expected, str(error.value).splitlines()[-1])


def test_float_ids_are_a_type_error(getkey):
    emb = zoo.Embedding(10, 2, key=getkey())
    with pytest.raises(TypeError):
        emb(jnp.array([1.0, 2.0]))


def test_bag_needs_an_axis(getkey):
    emb = zoo.Embedding(10, 2, combiner="mean", key=getkey())
    with pytest.raises(ValueError, match="last axis of ids is a bag"):
        emb(jnp.array(3))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_embeddings": 0}, "num_embeddings must be a positive int"),
        ({"embedding_dim": -2}, "embedding_dim must be a positive int"),
        ({"padding_idx": 10}, r"padding_idx must be a valid id.*padding_idx=0"),
        ({"combiner": "max"}, r'combiner must be None, "sum" or "mean".*combiner="mean"'),
        ({"dtype": jnp.int32}, "dtype must be a floating dtype"),
    ],
)
def test_bad_constructor_arguments(getkey, kwargs, match):
    arguments = {"num_embeddings": 10, "embedding_dim": 2, "key": getkey()} | kwargs
    with pytest.raises(ValueError, match=match):
        zoo.Embedding(**arguments)


def test_dense_optax_training_reduces_the_loss(getkey):
    """The dense fallback: plain optax over the whole model, table included."""
    emb = zoo.Embedding(20, 4, combiner="mean", key=getkey())
    ids = jax.random.randint(getkey(), (8, 3), 0, 20)
    target = jax.random.normal(getkey(), (8, 4))
    opt = optax.sgd(20.0)
    state = opt.init(eqx.filter(emb, eqx.is_inexact_array))

    def loss_fn(emb):
        return jnp.mean((jax.vmap(emb)(ids) - target) ** 2)

    @eqx.filter_jit
    def step(emb, state):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(emb)
        updates, state = opt.update(grads, state)
        return eqx.apply_updates(emb, updates), state, loss

    first = loss_fn(emb)
    for _ in range(20):
        emb, state, _ = step(emb, state)
    assert loss_fn(emb) < 0.5 * first


def test_default_init_fills_every_row_with_the_documented_scale(getkey):
    # Several blocks and an overlapping last one: 2**20 // 64 = 16384 rows per block.
    emb = zoo.Embedding(40_000, 64, key=getkey())
    weight = np.asarray(emb.weight)
    assert np.all(np.abs(weight).sum(axis=1) > 0)
    assert abs(weight.std() - 1 / 8) < 0.002
    assert len(np.unique(weight, axis=0)) == 40_000  # no block repeats another
