import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo


def test_shapes_and_depth(getkey):
    model = zoo.MLP(in_size=5, out_size=3, hidden=(7, 11, 13), key=getkey())
    assert [layer.weight.shape for layer in model.layers] == [(7, 5), (11, 7), (13, 11), (3, 13)]
    assert model(jnp.ones(5)).shape == (3,)
    assert jax.vmap(model)(jnp.ones((4, 5))).shape == (4, 3)


def test_linear_model_when_no_hidden_layers(getkey):
    model = zoo.MLP(in_size=4, out_size=2, hidden=(), key=getkey())
    x = jax.random.normal(getkey(), (4,))
    layer = model.layers[0]
    np.testing.assert_allclose(model(x), layer.weight @ x + layer.bias, rtol=1e-6)


def test_is_a_pytree_of_its_arrays_only(getkey):
    model = zoo.MLP(in_size=3, out_size=2, hidden=(4,), dropout=0.5, key=getkey())
    leaves = jax.tree.leaves(model)
    assert len(leaves) == 4 and all(eqx.is_array(leaf) for leaf in leaves)


def test_activation_names_and_callables(getkey):
    key = getkey()
    by_name = zoo.MLP(3, 2, (4,), activation="tanh", final_activation="sigmoid", key=key)
    by_callable = zoo.MLP(3, 2, (4,), activation=jnp.tanh, final_activation=jax.nn.sigmoid, key=key)
    x = jnp.arange(3.0)
    np.testing.assert_array_equal(by_name(x), by_callable(x))
    assert jnp.all((by_name(x) > 0) & (by_name(x) < 1))


@pytest.mark.parametrize("init, gain", [("he", 2.0), ("lecun", 1.0)])
def test_initialisation_variance(getkey, init, gain):
    model = zoo.MLP(1000, 1000, (), init=init, key=getkey())
    variance = float(jnp.var(model.layers[0].weight))
    assert variance == pytest.approx(gain / 1000, rel=0.05)
    assert not jnp.any(model.layers[0].bias)


def test_dtype(getkey):
    model = zoo.MLP(3, 2, (4,), dtype=jnp.float16, key=getkey())
    assert all(leaf.dtype == jnp.float16 for leaf in jax.tree.leaves(model))
    assert model(jnp.ones(3, jnp.float16)).dtype == jnp.float16


def test_dropout_only_with_a_key(getkey):
    model = zoo.MLP(20, 20, (200,), dropout=0.5, key=getkey())
    x = jnp.ones(20)
    np.testing.assert_array_equal(model(x), model(x))  # no key: inference, deterministic
    key = getkey()
    np.testing.assert_array_equal(model(x, key=key), model(x, key=key))  # same key, same mask
    assert not np.allclose(model(x, key=key), model(x, key=getkey()))
    assert not np.allclose(model(x), model(x, key=key))


def test_dropout_keeps_the_mean(getkey):
    # Inverted dropout scales survivors by 1/(1-p) so the expected activation is unchanged.
    model = zoo.MLP(1, 1, (1,), dropout=0.5, activation="identity", key=getkey())
    model = eqx.tree_at(
        lambda m: (m.layers[0].weight, m.layers[1].weight),
        model,
        (jnp.ones((1, 1)), jnp.ones((1, 1))),
    )
    keys = jax.random.split(getkey(), 20_000)
    outputs = jax.vmap(lambda k: model(jnp.ones(1), key=k))(keys)
    assert float(jnp.mean(outputs)) == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(in_size=0, out_size=2), ValueError, "in_size must be a positive int; got 0"),
        (dict(in_size=3, out_size=-1), ValueError, "out_size must be a positive int; got -1"),
        (dict(in_size=3, out_size=2, hidden=(4, 0)), ValueError, r"hidden must hold positive"),
        (dict(in_size=3, out_size=2, dropout=1.0), ValueError, r"dropout must be .* \[0, 1\)"),
        (dict(in_size=3, out_size=2, init="xavier"), ValueError, "init must be one of 'he'"),
        (dict(in_size=3, out_size=2, activation="relu6"), ValueError, "activation must be"),
        # A type mistake is caught by beartype (switched on in tests) or by the eager check.
        (dict(in_size=3, out_size=2, hidden=5), TypeError, "hidden"),
    ],
)
def test_bad_construction_arguments(getkey, kwargs, error, message):
    with pytest.raises(error, match=message):
        zoo.MLP(**kwargs, key=getkey())


def test_wrong_feature_size_is_a_clear_error(getkey):
    model = zoo.MLP(4, 2, (3,), key=getkey())
    with pytest.raises(ValueError, match=r"x must be one example of shape \(4,\)"):
        model(jnp.ones(5))
    # A batch passed whole has the wrong rank: jaxtyping (on in tests) names the parameter.
    with pytest.raises(TypeError, match="parameter 'x'"):
        model(jnp.ones((8, 4)))
