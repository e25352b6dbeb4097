"""A user's loss may take a key or not: every entry point that calls one reads its form once."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo

from .helpers import train, tree_equal


def _data(key, n=64, features=5, classes=3):
    x_key, y_key = jax.random.split(key)
    return {
        "x": np.asarray(jax.random.normal(x_key, (n, features)), np.float32),
        "y": np.asarray(jax.random.randint(y_key, (n,), 0, classes), np.int32),
    }


def _mean_cross_entropy(model, batch):
    return zoo.losses.cross_entropy(jax.vmap(model)(batch["x"]), batch["y"]).mean()


def _keyless(model, batch):
    return _mean_cross_entropy(model, batch)


def _keyed(model, batch, key):
    del key
    return _mean_cross_entropy(model, batch)


def _keyword_key(model, batch, *, key):
    del key
    return _mean_cross_entropy(model, batch)


def _scaled(model, batch, scale):
    return scale * _mean_cross_entropy(model, batch)


def _star_args(*args):
    return _mean_cross_entropy(*args[:2])


class _CallableLoss:
    def __call__(self, model, batch):
        return _mean_cross_entropy(model, batch)


def _train(loss, key):
    model = zoo.MLP(in_size=5, out_size=3, hidden=(8,), key=key)
    trained, _ = train(
        model, _data(key), loss=loss, epochs=2, batch_size=16, progress=False, key=key
    )
    return trained


@pytest.mark.parametrize(
    "loss",
    [
        _keyless,
        _keyword_key,
        functools.partial(_scaled, scale=1.0),
        _star_args,
        _CallableLoss(),
        lambda model, batch, key=None: _mean_cross_entropy(model, batch),
    ],
    ids=["keyless", "keyword_key", "partial", "star_args", "callable_object", "default_key"],
)
def test_every_accepted_form_trains_as_the_keyed_form(loss, getkey):
    key = getkey()
    assert tree_equal(_train(loss, key), _train(_keyed, key))


def test_a_keyless_loss_gets_per_example_grads(getkey):
    key = getkey()
    model = zoo.MLP(in_size=5, out_size=3, hidden=(8,), key=key)
    batch = {name: jnp.asarray(x[:8]) for name, x in _data(key).items()}
    keyless = zoo.per_example_grads(_keyless, model, batch)
    keyed = zoo.per_example_grads(_keyed, model, batch, key=key)
    assert tree_equal(keyless, keyed)
    assert eqx.filter(keyless, eqx.is_array).layers[0].weight.shape == (8, 8, 5)


def test_a_registered_keyless_loss_trains(getkey):
    zoo.losses.register_loss("keyless_cross_entropy", _keyless)
    try:
        key = getkey()
        assert tree_equal(_train("keyless_cross_entropy", key), _train(_keyed, key))
    finally:
        del zoo.losses.LOSSES["keyless_cross_entropy"]


@pytest.mark.parametrize(
    "loss",
    [
        lambda model: 0.0,
        lambda model, batch, key, extra: 0.0,
        lambda **kwargs: 0.0,
        functools.partial(_scaled, None, None),  # binds the model and the batch
    ],
    ids=["one_argument", "four_arguments", "keywords_only", "partial_binding_two"],
)
def test_a_loss_of_another_form_is_refused_before_training(loss, getkey):
    model = zoo.MLP(in_size=5, out_size=3, hidden=(8,), key=getkey())
    with pytest.raises(TypeError, match=r"loss must be callable as loss\(model, batch, key\)"):
        train(model, _data(getkey()), loss=loss, epochs=1, progress=False)
    with pytest.raises(TypeError, match=r"def loss\(model, batch\):"):
        zoo.per_example_grads(loss, model, {"x": jnp.zeros((2, 5)), "y": jnp.zeros(2, "int32")})
