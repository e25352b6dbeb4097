import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo

from .helpers import train


def _log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_cross_entropy_matches_numpy(getkey):
    logits = jax.random.normal(getkey(), (6, 4))
    labels = jnp.array([0, 1, 2, 3, 0, 1])
    expected = -_log_softmax(np.asarray(logits))[np.arange(6), np.asarray(labels)]
    np.testing.assert_allclose(zoo.losses.cross_entropy(logits, labels), expected, rtol=1e-5)


def test_cross_entropy_rejects_float_labels(getkey):
    with pytest.raises(TypeError, match="integer class labels"):
        zoo.losses.cross_entropy(jnp.zeros((2, 3)), jnp.zeros(2))


def test_cross_entropy_rejects_wrong_label_length():
    with pytest.raises(ValueError, match="one label per example"):
        zoo.losses.cross_entropy(jnp.zeros((2, 3)), jnp.zeros(3, jnp.int32))


def test_mse_and_bce_match_numpy(getkey):
    predictions = np.asarray(jax.random.normal(getkey(), (5, 3)))
    targets = np.asarray(jax.random.bernoulli(getkey(), 0.5, (5, 3))).astype(np.float32)
    np.testing.assert_allclose(
        zoo.losses.mse(jnp.asarray(predictions), jnp.asarray(targets)),
        ((predictions - targets) ** 2).mean(-1),
        rtol=1e-5,
    )
    probabilities = 1 / (1 + np.exp(-predictions))
    expected = -(targets * np.log(probabilities) + (1 - targets) * np.log(1 - probabilities))
    np.testing.assert_allclose(
        zoo.losses.bce(jnp.asarray(predictions), jnp.asarray(targets)), expected.mean(-1), rtol=1e-5
    )


def test_accuracy_multiclass_and_binary():
    logits = jnp.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    np.testing.assert_array_equal(zoo.metrics.accuracy(logits, jnp.array([0, 1, 1])), [1, 1, 0])
    single = jnp.array([[0.5], [-2.0]])
    np.testing.assert_array_equal(zoo.metrics.accuracy(single, jnp.array([1, 1])), [1, 0])


def test_unknown_loss_lists_the_known_ones(getkey):
    model = zoo.MLP(2, 2, (), key=getkey())
    data = {"x": np.zeros((4, 2), np.float32), "y": np.zeros(4, np.int32)}
    with pytest.raises(ValueError, match="'cross_entropy', 'mse', 'bce'"):
        train(model, data, loss="hinge")


def test_unknown_metric_lists_the_known_ones(getkey):
    model = zoo.MLP(2, 2, (), key=getkey())
    data = {"x": np.zeros((4, 2), np.float32), "y": np.zeros(4, np.int32)}
    with pytest.raises(ValueError, match="'accuracy'"):
        zoo.evaluate(model, data, ["f1"])


def test_evaluate_is_exact_with_a_partial_last_batch(getkey):
    model = zoo.MLP(3, 4, (5,), key=getkey())
    x = jax.random.normal(getkey(), (10, 3))
    y = jax.random.randint(getkey(), (10,), 0, 4)
    logits = jax.vmap(model)(x)
    expected_accuracy = float(jnp.mean(jnp.argmax(logits, -1) == y))
    expected_loss = float(jnp.mean(zoo.losses.cross_entropy(logits, y)))
    result = zoo.evaluate(model, {"x": x, "y": y}, ["accuracy", "cross_entropy"], batch_size=4)
    assert result["accuracy"] == pytest.approx(expected_accuracy)
    assert result["cross_entropy"] == pytest.approx(expected_loss, rel=1e-5)


def test_register_loss(getkey):
    def hinge(model, batch, key):
        return jnp.mean(jax.nn.relu(1 - jax.vmap(model)(batch["x"])[:, 0] * batch["y"]))

    zoo.losses.register_loss("test_hinge", hinge)
    try:
        model = zoo.MLP(2, 1, (), key=getkey())
        data = {"x": np.ones((8, 2), np.float32), "y": np.ones(8, np.float32)}
        _, history = train(model, data, loss="test_hinge", epochs=2, batch_size=4)
        assert history["train"]["loss"][1] < history["train"]["loss"][0]
    finally:
        del zoo.losses.LOSSES["test_hinge"]
