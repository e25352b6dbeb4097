"""Helpers shared by the tests."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import zoo


def tree_allclose(x, y, *, rtol=1e-5, atol=1e-8) -> bool:
    """True when two pytrees have the same structure and all array leaves are close."""
    x_arrays, x_static = eqx.partition(x, eqx.is_array)
    y_arrays, y_static = eqx.partition(y, eqx.is_array)
    if jax.tree.structure(x_arrays) != jax.tree.structure(y_arrays) or x_static != y_static:
        return False
    leaves = zip(jax.tree.leaves(x_arrays), jax.tree.leaves(y_arrays), strict=True)
    return all(
        a.shape == b.shape and a.dtype == b.dtype and np.allclose(a, b, rtol=rtol, atol=atol)
        for a, b in leaves
    )


def tree_equal(x, y) -> bool:
    """True when two pytrees are equal bit for bit."""
    return bool(eqx.tree_equal(x, y, typematch=True))


def as_numpy(x):
    return np.asarray(jnp.asarray(x))


def planted_split(key):
    """Synthetic interactions, 500 users x 200 items x 20 each, split leave-last-out.

    The recommender tests share this size so that JAX compiles each of their programs once.
    """
    data = zoo.data.synthetic_interactions(500, 200, interactions_per_user=20, key=key)
    return zoo.data.leave_last_out(data)
