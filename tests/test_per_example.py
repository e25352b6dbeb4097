import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import zoo

from .helpers import tree_allclose


def test_per_example_grads_match_a_loop(getkey):
    model = zoo.MLP(3, 4, (5,), key=getkey())
    batch = {"x": jax.random.normal(getkey(), (6, 3)), "y": jnp.arange(6) % 4}
    grads = zoo.per_example_grads("cross_entropy", model, batch)
    loss = zoo.losses.LOSSES["cross_entropy"]
    for i in range(6):
        one = {"x": batch["x"][i : i + 1], "y": batch["y"][i : i + 1]}
        expected = eqx.filter_grad(loss)(model, one, None)
        assert tree_allclose(jax.tree.map(lambda g, i=i: g[i], grads), expected, rtol=1e-5)


def test_mean_of_per_example_grads_is_the_batch_grad(getkey):
    model = zoo.MLP(3, 4, (5,), key=getkey())
    batch = {"x": jax.random.normal(getkey(), (8, 3)), "y": jnp.arange(8) % 4}
    grads = zoo.per_example_grads("cross_entropy", model, batch)
    batch_grad = eqx.filter_grad(zoo.losses.LOSSES["cross_entropy"])(model, batch, None)
    assert tree_allclose(jax.tree.map(lambda g: g.mean(0), grads), batch_grad, rtol=1e-5, atol=1e-7)


def test_per_example_grad_norms(getkey):
    model = zoo.MLP(3, 2, (4,), key=getkey())
    batch = {"x": jax.random.normal(getkey(), (5, 3)), "y": jnp.arange(5) % 2}
    norms = zoo.per_example_grad_norms("cross_entropy", model, batch)
    grads = zoo.per_example_grads("cross_entropy", model, batch)
    expected = np.sqrt(
        sum(
            np.sum(np.asarray(g) ** 2, axis=tuple(range(1, g.ndim))) for g in jax.tree.leaves(grads)
        )
    )
    assert norms.shape == (5,)
    np.testing.assert_allclose(norms, expected, rtol=1e-5)
