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


def scrambled(tree, seed: int = 0):
    """`tree` with every array leaf replaced by random values of its shape and dtype (typed keys
    by random keys), so that a round trip that drops or mixes up leaves cannot pass unnoticed.

    Drawn with NumPy: JAX's random ops would compile anew for every shape and dtype."""
    rng = np.random.default_rng(seed)

    def random_like(leaf):
        if not eqx.is_array(leaf):
            return leaf
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = jax.random.key_data(leaf)
            bits = rng.integers(0, 2**32, data.shape, dtype=np.uint32)
            return jax.random.wrap_key_data(bits, impl=jax.random.key_impl(leaf))
        if np.issubdtype(leaf.dtype, np.integer):
            values = rng.integers(0, 100, leaf.shape).astype(leaf.dtype)
        elif np.issubdtype(leaf.dtype, np.complexfloating):
            pair = rng.standard_normal((2, *leaf.shape))
            values = (pair[0] + 1j * pair[1]).astype(leaf.dtype)
        else:
            values = rng.standard_normal(leaf.shape).astype(leaf.dtype)
        return values if isinstance(leaf, np.ndarray) else jnp.asarray(values)

    return jax.tree.map(random_like, tree)


def planted_split(key):
    """Synthetic interactions, 500 users x 200 items x 20 each, split leave-last-out.

    The recommender tests share this size so that JAX compiles each of their programs once.
    """
    data = zoo.data.synthetic_interactions(500, 200, interactions_per_user=20, key=key)
    return zoo.data.leave_last_out(data)


class OnEpoch(zoo.Callback):
    """Calls `fn(history)` after each epoch: a callback in one line, for tests."""

    fn: object

    def after_epoch(self, state, info):
        self.fn(info.history)
        return state, False


_LOOP = ("last_batch", "on_nonfinite", "fused", "steps_per_chunk", "eval_batch_size", "accumulate",
         "grad_norm")  # fmt: skip
_CHECKPOINTING = {"checkpoint_dir": "directory", "checkpoint_every": "every", "keep": "keep",
                  "resume": "resume"}  # fmt: skip


def options(**flat) -> dict:
    """`zoo.train`'s keywords from the flat ones these tests were written with (e.g.
    `checkpoint_dir=..., resume=True, progress=False`), as its option objects: a `zoo.Loop`,
    a `zoo.Checkpointing`, a `zoo.ValidationSplit` and the callbacks. Anything else passes as
    is, so a bad value reaches the option that checks it."""
    loop = {name: flat.pop(name) for name in _LOOP if name in flat}
    checkpointing = {new: flat.pop(old) for old, new in _CHECKPOINTING.items() if old in flat}
    callbacks = list(flat.pop("callbacks", []))
    if flat.pop("progress", False):
        callbacks.append(zoo.ProgressBar())
    if flat.get("early_stopping") is not None:
        callbacks.append(flat.pop("early_stopping"))
    flat.pop("early_stopping", None)
    if "log_dir" in flat or "tensorboard" in flat:
        log_dir = flat.pop("log_dir", None)
        tensorboard = flat.pop("tensorboard", False)
        if log_dir is not None or tensorboard:
            callbacks.append(zoo.Logger(log_dir, tensorboard=tensorboard))
    if flat.get("on_epoch") is not None:
        callbacks.append(OnEpoch(flat.pop("on_epoch")))
    flat.pop("on_epoch", None)
    if "stratify" in flat:
        stratify = flat.pop("stratify")
        if flat.get("validation_split") is not None or stratify:
            flat["validation_split"] = zoo.ValidationSplit(flat["validation_split"], stratify)
    if loop:
        flat["loop"] = zoo.Loop(**loop)
    if checkpointing.get("directory") is not None:
        flat["checkpoint"] = zoo.Checkpointing(**checkpointing)
    return flat | {"callbacks": callbacks}


def train(model, data, **flat):
    """`zoo.train(model, data, **options(**flat))`."""
    return zoo.train(model, data, **options(**flat))
