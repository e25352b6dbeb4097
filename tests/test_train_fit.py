"""What people expect from fit(): early stopping with the best model, a validation split, mixed
precision, gradient accumulation and epoch logs, all inside the one function `zoo.train`."""

import json
import struct

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import zoo
from zoo import EarlyStopping
from zoo._training._callbacks import decide
from zoo._training._data import split_validation
from zoo._training._step import dynamic_loss_scaling

from .helpers import train, tree_allclose, tree_equal


def _blobs(n=240, features=6, classes=3, noise=2.0, seed=0):
    """A small classification dataset, noisy enough that a held-out loss turns back up."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, features))
    y = rng.integers(0, classes, n).astype(np.int32)
    x = (centres[y] + noise * rng.normal(size=(n, features))).astype(np.float32)
    return {"x": x, "y": y}


def _fit(model, data, **kwargs):
    options = dict(optimizer=optax.adam(3e-2), batch_size=16, key=jax.random.key(1), progress=False)
    return train(model, data, **(options | kwargs))


# -- early stopping ------------------------------------------------------------------------------


def test_early_stopping_returns_the_best_epochs_model_bit_for_bit():
    model = zoo.MLP(6, 3, (64,), key=jax.random.key(0))
    stopping = EarlyStopping("cross_entropy", patience=2)
    stopped, history = _fit(
        model, _blobs(), epochs=40, validation_split=0.25, early_stopping=stopping
    )
    best = history["best_epoch"]
    assert history["stop_reason"] == "early_stopping"
    assert history["epoch"][-1] == best + 2 < 40  # stopped after `patience` worse epochs
    losses = history["eval"]["cross_entropy"]
    assert losses[best - 1] == min(losses)
    exactly, _ = _fit(model, _blobs(), epochs=best, validation_split=0.25)
    assert tree_equal(stopped, exactly)
    last, _ = _fit(model, _blobs(), epochs=history["epoch"][-1], validation_split=0.25)
    assert not tree_allclose(stopped, last)  # the best epoch's model, not the last


def test_early_stopping_that_never_triggers_runs_every_epoch():
    model = zoo.MLP(6, 3, (8,), key=jax.random.key(0))
    stopping = EarlyStopping("accuracy", patience=50, restore_best=False)
    trained, history = _fit(
        model, _blobs(), epochs=3, validation_split=0.25, early_stopping=stopping
    )
    plain, _ = _fit(model, _blobs(), epochs=3, validation_split=0.25)
    assert history["stop_reason"] == "epochs" and history["epoch"] == [1, 2, 3]
    assert tree_equal(trained, plain)


@pytest.mark.parametrize(
    "values, options, best_epoch, stop",
    [
        ([3.0, 2.0, 2.5, 2.4], dict(patience=2), 2, True),
        ([3.0, 2.0, 2.5, 2.4], dict(patience=3), 2, False),
        ([3.0, 2.0, 2.5, 1.0], dict(patience=2), 4, False),
        ([3.0, 2.0, 1.95, 1.9], dict(patience=2, min_delta=0.1), 2, True),
        ([0.5, 0.7, 0.6], dict(mode="max", patience=1), 2, True),
        ([0.5, float("nan")], dict(patience=1), 1, True),
        ([1.0, 2.0], dict(patience=0), 1, True),
        ([], dict(), 0, False),
    ],
)
def test_early_stopping_decision(values, options, best_epoch, stop):
    decision = decide(values, options.get("mode", "min"), options.get("min_delta", 0.0),
                      options.get("patience", 3))  # fmt: skip
    assert (decision.best_epoch, decision.stop) == (best_epoch, stop)


@pytest.mark.parametrize("name, mode", [("accuracy", "max"), ("hr@10", "max"), ("mse", "min")])
def test_early_stopping_mode_follows_the_figure(name, mode):
    assert EarlyStopping(name).resolved_mode == mode


def test_early_stopping_on_an_eval_fn_figure_is_checked_before_training():
    model = zoo.MLP(6, 3, (8,), key=jax.random.key(0))
    calls, epochs = [], []

    def eval_fn(m):
        calls.append(m)
        return {"bias": jnp.sum(m.layers[-1].bias)}

    with pytest.raises(ValueError, match=r"monitors 'score'.*produces 'bias'"):
        _fit(
            model,
            _blobs(),
            eval_fn=eval_fn,
            early_stopping=EarlyStopping("score", mode="max"),
            on_epoch=epochs.append,
        )
    assert len(calls) == 1 and calls[0] is model and not epochs  # asked once, before training
    _, history = _fit(
        model, _blobs(), epochs=2, eval_fn=eval_fn, early_stopping=EarlyStopping("bias", mode="max")
    )
    assert history["stop_reason"] in ("epochs", "early_stopping")


# -- validation split ----------------------------------------------------------------------------


def _rows(arrays):
    return {tuple(row) for row in np.column_stack([arrays["x"], arrays["y"]])}


@pytest.mark.parametrize("stratify", [False, True])
def test_validation_split_is_disjoint_complete_and_deterministic(stratify):
    data = _blobs(n=203)
    split = lambda seed: split_validation(  # noqa: E731
        data, 0.2, stratify=stratify, key=jax.random.key(seed)
    )
    train, held = split(0)
    assert not _rows(train) & _rows(held)
    assert _rows(train) | _rows(held) == _rows(data)
    assert len(held["y"]) == pytest.approx(0.2 * 203, abs=2)
    _, held_again = split(0)
    assert all(np.array_equal(held[k], held_again[k]) for k in held)
    assert _rows(split(1)[1]) != _rows(held)


def test_stratified_split_keeps_the_class_proportions():
    y = np.repeat(np.arange(3, dtype=np.int32), [100, 50, 10])
    data = {"x": np.arange(160, dtype=np.float32)[:, None], "y": y}
    _, held = split_validation(data, 0.1, stratify=True, key=jax.random.key(0))
    assert np.bincount(held["y"]).tolist() == [10, 5, 1]


def test_validation_split_is_the_eval_set():
    data, model = _blobs(), zoo.MLP(6, 3, (8,), key=jax.random.key(0))
    trained, history = _fit(model, data, epochs=2, validation_split=0.25)
    train, held = split_validation(
        data, 0.25, stratify=False, key=jax.random.fold_in(jax.random.key(1), 2)
    )
    by_hand, expected = _fit(model, train, epochs=2, eval_data=held)
    assert tree_equal(trained, by_hand)
    assert history["eval"] == expected["eval"]


# -- gradient accumulation -----------------------------------------------------------------------


@pytest.mark.parametrize("fused", [True, False])
def test_accumulation_equals_one_step_on_the_whole_batch(fused):
    data, model = _blobs(n=96), zoo.MLP(6, 3, (16,), key=jax.random.key(0))
    options = dict(optimizer=optax.sgd(0.1), epochs=2, batch_size=32, fused=fused)
    whole, history = _fit(model, data, **options)
    accumulated, accumulated_history = _fit(model, data, accumulate=4, **options)
    assert tree_allclose(accumulated, whole, rtol=1e-5, atol=1e-6)
    assert accumulated_history["step"] == history["step"] == [3, 6]
    np.testing.assert_allclose(accumulated_history["train"]["loss"], history["train"]["loss"], 1e-5)


def test_accumulation_matches_optax_multisteps_on_micro_batches():
    # MultiSteps averages k consecutive batches of size B/k; those are the k micro-batches of
    # the B-batch in zoo's order, so both take the same optimizer steps (MultiSteps counts
    # k times the steps).
    data, model = _blobs(n=96), zoo.MLP(6, 3, (16,), key=jax.random.key(0))
    accumulated, _ = _fit(model, data, optimizer=optax.adam(1e-2), batch_size=32, accumulate=4)
    multi_steps = optax.MultiSteps(optax.adam(1e-2), every_k_schedule=4)
    multi, history = _fit(model, data, optimizer=multi_steps, batch_size=8)
    assert history["step"] == [12]
    assert tree_allclose(accumulated, multi, rtol=1e-5, atol=1e-6)


def test_an_uneven_last_batch_is_taken_whole():
    data, model = _blobs(n=100), zoo.MLP(6, 3, (16,), key=jax.random.key(0))
    options = dict(optimizer=optax.sgd(0.1), batch_size=32)
    whole, _ = _fit(model, data, **options)
    accumulated, _ = _fit(model, data, accumulate=4, **options)  # batches of 32, 32, 32, 4
    assert tree_allclose(accumulated, whole, rtol=1e-5, atol=1e-6)


def test_accumulation_with_a_sparse_optimizer_is_a_clear_error():
    model = zoo.MatrixFactorization(10, 10, 4, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"accumulate > 1 does not work with zoo\.sparse"):
        train(model, {"x": np.zeros(4)}, optimizer=zoo.sparse.sgd(0.1), accumulate=2)


# -- mixed precision -----------------------------------------------------------------------------


def test_bfloat16_computes_in_bfloat16_and_keeps_float32_parameters():
    seen = []
    cross_entropy = zoo.losses.LOSSES["cross_entropy"]

    def loss(model, batch, key):
        seen.append((model.layers[0].weight.dtype, batch["x"].dtype, batch["y"].dtype))
        return cross_entropy(model, batch, key)

    model = zoo.MLP(6, 3, (8,), key=jax.random.key(0))
    trained, _ = _fit(model, _blobs(), loss=loss, precision="bfloat16", metrics=())
    bfloat16, int32 = jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.int32)
    assert seen and set(seen) == {(bfloat16, bfloat16, int32)}
    floating = jax.tree.leaves(eqx.filter(trained, eqx.is_inexact_array))
    assert {leaf.dtype for leaf in floating} == {jnp.dtype(jnp.float32)}
    assert not tree_allclose(trained, model)


def test_evaluation_after_a_bfloat16_run_computes_in_float32():
    # The eval loss and the metrics describe the returned (float32) model: computed in
    # bfloat16, the eval loss differed from the cross-entropy metric in its third digit.
    data = zoo.data.digits("train")
    model = zoo.MLP(64, 10, (32,), key=jax.random.key(0))
    trained, history = _fit(
        model, data, epochs=2, batch_size=64, eval_data=zoo.data.digits("test"),
        metrics=("cross_entropy",), precision="bfloat16",
    )  # fmt: skip
    loss, metric = history["eval"]["loss"][-1], history["eval"]["cross_entropy"][-1]
    np.testing.assert_allclose(loss, metric, rtol=1e-5)
    evaluated = zoo.evaluate(trained, zoo.data.digits("test"), metrics=("cross_entropy",))
    np.testing.assert_allclose(loss, evaluated["cross_entropy"], rtol=1e-5)


def test_bfloat16_and_float16_train_digits_as_well_as_float32():
    train, test = zoo.data.digits("train"), zoo.data.digits("test")
    model = zoo.MLP(64, 10, (128,), key=jax.random.key(0))
    accuracies = {}
    for precision in ("float32", "bfloat16", "float16"):
        _, history = _fit(
            model,
            train,
            optimizer=optax.adam(2e-3),
            epochs=8,
            batch_size=32,
            eval_data=test,
            metrics=("accuracy",),
            precision=precision,
        )
        accuracies[precision] = history["eval"]["accuracy"][-1]
    assert accuracies["float32"] >= 0.95
    # 450 test digits: one digit is 0.22 points; allow two.
    for low in ("bfloat16", "float16"):
        assert accuracies[low] >= accuracies["float32"] - 0.0045, accuracies


@jax.numpy_dtype_promotion("standard")  # as zoo.train runs optax (Adam mixes int and float)
def test_dynamic_loss_scaling_skips_overflowing_steps_and_adapts_the_scale():
    params = {"w": jnp.ones(3)}
    scaling = dynamic_loss_scaling(optax.adam(0.1), initial_scale=8.0, growth_interval=2)
    state = scaling.init(params)
    updates, skipped = scaling.update({"w": jnp.array([1.0, jnp.inf, 0.0])}, state, params)
    assert tree_equal(updates, {"w": jnp.zeros(3)}) and tree_equal(skipped.inner, state.inner)
    assert (float(skipped.scale), int(skipped.overflows)) == (4.0, 1)
    grads = {"w": jnp.ones(3)}
    once, first = scaling.update(grads, skipped, params)
    _, second = scaling.update(grads, first, params)
    expected, _ = optax.adam(0.1).update(grads, state.inner, params)
    assert tree_equal(once, expected)  # the skipped step left no trace in Adam's moments
    assert [float(first.scale), float(second.scale)] == [4.0, 8.0]  # doubles after 2 finite


def test_float16_scales_the_loss_and_survives_overflow():
    cross_entropy = zoo.losses.LOSSES["cross_entropy"]

    def large_loss(model, batch, key):  # times 32768 (the first scale), the backward overflows
        return cross_entropy(model, batch, key) * 1000.0

    model = zoo.MLP(6, 3, (16,), key=jax.random.key(0))
    trained, history = _fit(model, _blobs(), loss=large_loss, precision="float16", epochs=2)
    assert history["train"]["loss_scale_overflows"][0] >= 1
    assert history["train"]["loss_scale"][0] < 2.0**15
    assert history["train"]["loss"][1] < history["train"]["loss"][0]
    floating = jax.tree.leaves(eqx.filter(trained, eqx.is_inexact_array))
    assert {leaf.dtype for leaf in floating} == {jnp.dtype(jnp.float32)}
    assert all(bool(jnp.isfinite(leaf).all()) for leaf in floating)


# -- logs ----------------------------------------------------------------------------------------


def _tensorboard_scalars(folder):
    """{tag: {step: value}} from the TFRecord-framed event files in `folder`."""
    from tensorboardX.proto import event_pb2

    scalars = {}
    for path in folder.glob("events.out.tfevents.*"):
        content = path.read_bytes()
        position = 0
        while position < len(content):
            (length,) = struct.unpack("<Q", content[position : position + 8])
            record = content[position + 12 : position + 12 + length]  # past length and its crc
            position += 12 + length + 4
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def test_logs_hold_every_epoch_as_json_lines_and_tensorboard_scalars(tmp_path):
    model = zoo.MLP(6, 3, (8,), key=jax.random.key(0))
    _, history = _fit(
        model, _blobs(), epochs=3, validation_split=0.25, log_dir=tmp_path, tensorboard=True
    )
    lines = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    assert [line["train/loss"] for line in lines] == history["train"]["loss"]
    assert [line["eval/accuracy"] for line in lines] == history["eval"]["accuracy"]
    scalars = _tensorboard_scalars(tmp_path)
    expected = dict(enumerate(history["eval"]["accuracy"], start=1))
    assert scalars["eval/accuracy"] == pytest.approx(expected)
    assert sorted(scalars["train/loss"]) == [1, 2, 3]
