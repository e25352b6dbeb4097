import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import zoo
from zoo._training._data import checked_dataset

from .helpers import train, tree_allclose, tree_equal


def _blobs(key, n=200, features=6, classes=3):
    """A small, learnable classification dataset."""
    centre_key, noise_key, label_key = jax.random.split(key, 3)
    centres = 3.0 * jax.random.normal(centre_key, (classes, features))
    y = jax.random.randint(label_key, (n,), 0, classes)
    x = centres[y] + jax.random.normal(noise_key, (n, features))
    return {"x": np.array(x, np.float32), "y": np.array(y, np.int32)}


def _hand_written_training(model, data, optimizer, epochs, batch_size, key):
    """The loop a user would write, visiting the examples in zoo's documented order."""
    loss = zoo.losses.LOSSES["cross_entropy"]
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    n = len(data["y"])
    state = zoo.TrainState(model, opt_state, *(jnp.zeros((), jnp.int32) for _ in range(3)), key)
    step = 0
    for epoch in range(epochs):
        order = np.asarray(eqx.tree_at(lambda s: s.epoch, state, jnp.int32(epoch)).epoch_order(n))
        for start in range(0, n, batch_size):
            batch = {k: jnp.asarray(v[order[start : start + batch_size]]) for k, v in data.items()}
            step_key = eqx.tree_at(lambda s: s.step, state, jnp.int32(step)).step_key()
            grads = eqx.filter_grad(loss)(model, batch, step_key)
            updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
            model = eqx.apply_updates(model, updates)
            step += 1
    return model


@pytest.mark.parametrize("fused", [True, False])
def test_matches_a_hand_written_optax_loop(getkey, fused):
    data = _blobs(getkey(), n=50)
    model = zoo.MLP(6, 3, (8,), dropout=0.2, key=getkey())
    key = getkey()
    trained, _ = train(
        model,
        data,
        optimizer=optax.sgd(0.1),
        epochs=2,
        batch_size=16,
        key=key,
        fused=fused,
        progress=False,
    )
    expected = _hand_written_training(model, data, optax.sgd(0.1), 2, 16, key)
    assert tree_allclose(trained, expected, rtol=1e-5, atol=1e-6)


def test_fused_and_step_by_step_paths_agree_bit_for_bit(getkey):
    data = _blobs(getkey(), n=100)
    model = zoo.MLP(6, 3, (16,), dropout=0.1, key=getkey())
    runs = [
        train(
            model,
            data,
            epochs=2,
            batch_size=32,
            key=jax.random.key(3),
            fused=fused,
            steps_per_chunk=chunk,
            progress=False,
        )
        for fused, chunk in [(True, None), (True, 1), (False, None)]
    ]
    for trained, history in runs[1:]:
        assert tree_equal(trained, runs[0][0])
        assert history["train"]["loss"] == runs[0][1]["train"]["loss"]


def test_same_key_same_result_and_another_key_differs(getkey):
    data = _blobs(getkey())
    model = zoo.MLP(6, 3, (16,), key=getkey())
    first, _ = train(model, data, epochs=2, batch_size=32, key=jax.random.key(1))
    again, _ = train(model, data, epochs=2, batch_size=32, key=jax.random.key(1))
    other, _ = train(model, data, epochs=2, batch_size=32, key=jax.random.key(2))
    assert tree_equal(first, again)
    assert not tree_allclose(first, other)


def test_iterable_of_batches(getkey):
    data = _blobs(getkey(), n=96)
    batches = [{k: jnp.asarray(v[i : i + 32]) for k, v in data.items()} for i in range(0, 96, 32)]
    model = zoo.MLP(6, 3, (8,), key=getkey())
    trained, history = train(model, batches, optimizer=optax.sgd(0.1), epochs=3)
    assert history["step"] == [3, 6, 9]
    expected = model
    opt_state = optax.sgd(0.1).init(eqx.filter(model, eqx.is_array))
    for _ in range(3):
        for batch in batches:
            grads = eqx.filter_grad(zoo.losses.LOSSES["cross_entropy"])(expected, batch, None)
            updates, opt_state = optax.sgd(0.1).update(grads, opt_state)
            expected = eqx.apply_updates(expected, updates)
    assert tree_allclose(trained, expected, rtol=1e-5, atol=1e-6)


def test_a_spent_generator_is_a_clear_error(getkey):
    data = _blobs(getkey(), n=64)
    batches = ({k: v[i : i + 32] for k, v in data.items()} for i in range(0, 64, 32))
    with pytest.raises(ValueError, match="generator can be iterated only once"):
        train(zoo.MLP(6, 3, (8,), key=getkey()), batches, epochs=2)


@pytest.mark.parametrize("last_batch, steps, skipped", [("keep", 4, 0), ("drop", 3, 4)])
def test_last_partial_batch(getkey, last_batch, steps, skipped):
    data = _blobs(getkey(), n=100)
    _, history = train(
        zoo.MLP(6, 3, (8,), key=getkey()), data, batch_size=32, last_batch=last_batch
    )
    assert history["step"] == [steps]
    assert history.get("skipped_examples_per_epoch", 0) == skipped


def test_each_epoch_visits_every_example_once(getkey):
    model = zoo.MLP(2, 2, (), key=getkey())
    state = zoo.TrainState(model, None, *(jnp.zeros((), jnp.int32) for _ in range(3)), getkey())
    orders = [
        np.asarray(eqx.tree_at(lambda s: s.epoch, state, jnp.int32(e)).epoch_order(37))
        for e in range(3)
    ]
    for order in orders:
        np.testing.assert_array_equal(np.sort(order), np.arange(37))
    assert not np.array_equal(orders[0], orders[1])


def test_history_and_learning(getkey):
    data = _blobs(getkey(), n=250)
    data, eval_data = ({k: v[:200] for k, v in data.items()}, {k: v[200:] for k, v in data.items()})
    schedule = optax.linear_schedule(1e-2, 1e-3, transition_steps=20)
    optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=schedule)
    model = zoo.MLP(6, 3, (16,), key=getkey())
    _, history = train(
        model, data, optimizer=optimizer, epochs=4, batch_size=20, eval_data=eval_data,
        grad_norm=True,
    )  # fmt: skip
    assert history["epoch"] == [1, 2, 3, 4] and history["step"] == [10, 20, 30, 40]
    assert len(history["time"]) == 4 and all(t > 0 for t in history["time"])
    assert history["train"]["loss"][-1] < history["train"]["loss"][0]
    assert all(norm > 0 for norm in history["train"]["grad_norm"])
    # The learning rate of each epoch's last step: the schedule at steps 9, 19, 29, 39.
    assert history["train"]["learning_rate"] == pytest.approx([5.95e-3, 1.45e-3, 1e-3, 1e-3])
    assert set(history["eval"]) == {"loss", "cross_entropy", "accuracy"}
    assert history["eval"]["accuracy"][-1] > 0.9


def test_gradient_clipping_from_optax(getkey):
    data = _blobs(getkey())
    clipped = optax.chain(optax.clip_by_global_norm(1e-3), optax.sgd(1.0))
    model = zoo.MLP(6, 3, (16,), key=getkey())
    trained, history = train(model, data, optimizer=clipped, batch_size=200, grad_norm=True)
    moved = optax.tree.norm(
        jax.tree.map(
            jnp.subtract, eqx.filter(trained, eqx.is_array), eqx.filter(model, eqx.is_array)
        )
    )
    assert float(moved) == pytest.approx(1e-3, rel=1e-3)
    assert history["train"]["grad_norm"][0] > 1e-3  # the raw gradient was larger than the clip


def test_the_callers_model_survives_training(getkey):
    model = zoo.MLP(6, 3, (8,), key=getkey())
    before = jax.tree.map(np.asarray, model)
    train(model, _blobs(getkey()), epochs=1)
    assert tree_equal(jax.tree.map(np.asarray, model), before)  # not donated away


class _WithLookupTable(eqx.Module):
    mlp: zoo.MLP
    table: jax.Array  # integer: no gradient, and nothing for the optimizer to track

    def __call__(self, x, *, key=None):
        return self.mlp(x, key=key) * self.table[0].astype(x.dtype)


def test_a_model_with_an_integer_array_trains_with_adam(getkey):
    # Adam's state leaves for integer arrays became None after the first step, so the fused
    # loop's carry changed structure; the optimizer now sees the floating arrays only.
    model = _WithLookupTable(zoo.MLP(6, 3, (8,), key=getkey()), jnp.array([1, 2], jnp.int32))
    trained, history = train(model, _blobs(getkey()), epochs=2, batch_size=50)
    assert history["train"]["loss"][1] < history["train"]["loss"][0]
    assert tree_equal(trained.table, model.table)


def test_eval_fn_figures_are_recorded_each_epoch(getkey):
    seen = []
    model, history = train(
        zoo.MLP(6, 3, (8,), key=getkey()),
        _blobs(getkey()),
        epochs=2,
        eval_fn=lambda m: {"bias_sum": jnp.sum(m.layers[-1].bias), "two": 2},
        on_epoch=lambda h: seen.append(dict(h["eval"])),
    )
    assert history["eval"]["two"] == [2.0, 2.0] and len(seen) == 2 and "bias_sum" in seen[0]
    assert history["eval"]["bias_sum"][-1] == pytest.approx(float(jnp.sum(model.layers[-1].bias)))


def test_labels_out_of_range_in_batches_from_an_iterable_stop_the_step(getkey):
    # Arrays' labels are checked on the host before training, so their step checks none;
    # batches from an iterable are seen only by the step, which keeps the check.
    data = _blobs(getkey(), n=64)
    data["y"][37] = 3
    batches = [{k: v[i : i + 32] for k, v in data.items()} for i in (0, 32)]
    model = zoo.MLP(6, 3, (8,), key=getkey())
    with pytest.raises(ValueError, match=r"data\['y'\] must hold class labels in \[0, 3\)"):
        train(model, data, batch_size=32)
    with pytest.raises(Exception, match=r"labels must lie in \[0, 3\)"):
        train(model, batches, batch_size=32)


def test_non_finite_loss_names_the_step(getkey):
    data = _blobs(getkey(), n=64)
    data["x"][40] = np.nan
    model = zoo.MLP(6, 3, (8,), key=getkey())
    with pytest.raises(FloatingPointError, match=r"non-finite .* at step \d"):
        train(model, data, optimizer=optax.sgd(0.1), batch_size=64)


@pytest.mark.parametrize(
    "data, kwargs, error, message",
    [
        ({}, {}, ValueError, "data is empty"),
        (
            {"x": np.zeros((0, 6), np.float32), "y": np.zeros(0, np.int32)},
            {},
            ValueError,
            "no examples",
        ),
        (
            {"x": np.zeros((5, 6), np.float32), "y": np.zeros(4, np.int32)},
            {},
            ValueError,
            "equal length.*x=5, y=4",
        ),
        (
            {"x": np.zeros((5, 7), np.float32), "y": np.zeros(5, np.int32)},
            {},
            ValueError,
            r"x must be one example of shape \(6,\)",
        ),
        (
            {"x": np.zeros((5, 6), np.float32), "y": np.zeros(5, np.float32)},
            {},
            TypeError,
            "integer class labels",
        ),
        (
            {"x": np.zeros((5, 6), np.float32), "y": np.zeros(5, np.int32)},
            {"batch_size": -1},
            ValueError,
            "batch_size must be a positive int; got -1",
        ),
        (
            {"x": np.zeros((5, 6), np.float32), "y": np.zeros(5, np.int32)},
            {"epochs": -2},
            ValueError,
            "epochs must be an int >= 0",
        ),
        (
            {"x": np.zeros((5, 6), np.float32), "y": np.zeros(5, np.int32)},
            {"optimizer": 0.01},
            TypeError,
            "optimizer must be an optax GradientTransformation",
        ),
        (
            {"x": np.zeros((5, 6), np.float32), "y": np.zeros(5, np.int32)},
            {"last_batch": "pad"},
            (TypeError, ValueError),
            "last_batch",
        ),
        ([1, 2, 3], {}, TypeError, "data"),
    ],
)
def test_bad_input(getkey, data, kwargs, error, message):
    # Type mistakes meet beartype first in tests (TypeError naming the parameter), users the
    # eager checks' messages; both name the argument.
    model = zoo.MLP(6, 3, (8,), key=getkey())
    with pytest.raises(error, match=message):
        train(model, data, **kwargs)


def test_mnist_one_epoch_reaches_95_percent(shared_data):
    mnist = zoo.data.mnist("train", root=shared_data / "mnist", download=False)
    test = zoo.data.mnist("test", root=shared_data / "mnist", download=False)
    model = zoo.MLP(in_size=784, out_size=10, hidden=(256, 128), key=jax.random.key(0))
    _, history = train(
        model,
        mnist,
        optimizer=optax.adam(1e-3),
        epochs=1,
        batch_size=128,
        eval_data=test,
        key=jax.random.key(1),
    )
    assert history["eval"]["accuracy"][-1] >= 0.95


def test_skip_nonfinite_steps_leaves_the_model_unchanged_for_them(getkey):
    data = _blobs(getkey(), n=64)
    data["x"][:32] = np.nan  # the first batch of each epoch in order is poisoned
    model = zoo.MLP(6, 3, (8,), key=getkey())
    batches = [{k: jnp.asarray(v[i : i + 32]) for k, v in data.items()} for i in (0, 32)]
    skipped, history = train(
        model, batches, optimizer=optax.adam(1e-2), epochs=2, on_nonfinite="skip"
    )
    clean, _ = train(model, batches[1:], optimizer=optax.adam(1e-2), epochs=2)
    assert history["train"]["nonfinite_steps"] == [1, 1]
    assert np.isfinite(history["train"]["loss"]).all()
    # Adam's state never saw the bad steps, so the result is training on the clean batch alone.
    assert tree_allclose(skipped, clean, rtol=1e-6)


def test_batches_already_on_the_device_are_not_copied_through_the_host(getkey):
    batch = {"x": jax.random.normal(getkey(), (8, 6)), "y": jnp.zeros(8, jnp.int32)}
    checked = checked_dataset(batch, argument="batch")
    assert all(checked[name] is batch[name] for name in batch)
    with pytest.raises(ValueError, match=r"batch\['y'\] must have a leading example axis"):
        checked_dataset({"x": batch["x"], "y": jnp.zeros((), jnp.int32)}, argument="batch")


class _WithDropoutLayer(eqx.Module):
    """A model holding a Python float leaf: `eqx.nn.Dropout`'s rate."""

    linear: eqx.nn.Linear
    dropout: eqx.nn.Dropout

    def __init__(self, key):
        self.linear = eqx.nn.Linear(64, 10, key=key)
        self.dropout = eqx.nn.Dropout(0.1)

    def __call__(self, x, *, key=None):
        return self.linear(self.dropout(x, key=key, inference=key is None))


@pytest.mark.parametrize("fused", [True, False])
def test_a_model_with_a_python_float_leaf_trains_fused_and_not(getkey, fused):
    """Python floats in a model stay what they are: not traced, differentiated or optimized."""
    data = zoo.data.digits("train")

    def loss(model, batch, key):
        keys = jax.random.split(key, batch["x"].shape[0])
        logits = jax.vmap(lambda x, k: model(x, key=k))(batch["x"], keys)
        return zoo.losses.cross_entropy(logits, batch["y"]).mean()

    model, history = train(
        _WithDropoutLayer(getkey()), data, loss=loss, epochs=2, batch_size=64, fused=fused
    )
    assert model.dropout.p == 0.1 and isinstance(model.dropout.p, float)
    assert history["train"]["loss"][1] < history["train"]["loss"][0]
