"""One rule for arguments (`zoo._checks`): NumPy scalars are numbers like Python's, a bool is
never a number, and a key is a key; and `zoo.save` keeps a model's scalar leaves."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import zoo
from zoo import _checks

from .helpers import train, tree_equal


def _classification(n=12, features=4, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(size=(n, features)).astype(np.float32),
        "y": rng.integers(0, 3, n).astype(np.int32),
    }


def _fit(**kwargs):
    model = zoo.MLP(4, 3, (8,), key=jax.random.key(0))
    return train(model, _classification(), progress=False, key=jax.random.key(1), **kwargs)


# -- the checks themselves ---------------------------------------------------------------------


@pytest.mark.parametrize("value", [3, np.int64(3), np.int32(3), np.uint8(3)])
def test_numpy_integers_are_ints(value):
    checked = _checks.positive_int("n", value)
    assert checked == 3 and type(checked) is int


@pytest.mark.parametrize("value", [0.5, np.float32(0.5), np.float64(0.5), 1, np.int64(1)])
def test_numpy_floats_and_ints_are_reals(value):
    checked = _checks.real("rate", value, low=0.0)
    assert checked == float(value) and type(checked) is float


@pytest.mark.parametrize("value", [True, np.bool_(True), False, np.bool_(False)])
def test_a_bool_is_never_a_number(value):
    with pytest.raises(TypeError, match="n must be a positive int; got"):
        _checks.positive_int("n", value)
    with pytest.raises(TypeError, match="rate must be a finite float"):
        _checks.real("rate", value)


def test_a_numpy_bool_is_shown_as_itself():
    with pytest.raises(TypeError, match=r"^batch_size must be a positive int; got np\.True_\.$"):
        _checks.positive_int("batch_size", np.bool_(True))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), np.float32("-inf")])
def test_non_finite_numbers_are_refused(value):
    with pytest.raises(ValueError, match="rate must be a finite float"):
        _checks.real("rate", value)


def test_a_refusal_names_argument_value_and_example():
    with pytest.raises(
        ValueError, match=r"^n must be a positive int; got 0\. For example: f\(n=1\)"
    ):
        _checks.positive_int("n", 0, example="f(n=1)")


def test_keys_typed_and_legacy_pass_an_int_seed_does_not():
    typed, legacy = jax.random.key(0), jax.random.PRNGKey(0)
    assert _checks.key("key", typed) is typed and _checks.key("key", legacy) is legacy
    with pytest.raises(
        TypeError, match=r"key must be a PRNG key such as jax.random.key\(0\); got 7"
    ):
        _checks.key("key", 7)
    with pytest.raises(TypeError, match=r"key must be a PRNG key.*float32"):
        _checks.key("key", jnp.zeros(2))


# -- NumPy scalars accepted everywhere -----------------------------------------------------------


def test_train_takes_numpy_integers_as_the_same_run():
    numpy_args = dict(epochs=np.int64(2), batch_size=np.int64(4), eval_batch_size=np.int32(5))
    model_np, history_np = _fit(**numpy_args, eval_data=_classification(seed=1))
    model, history = _fit(epochs=2, batch_size=4, eval_batch_size=5, eval_data=_classification(1))
    assert tree_equal(model_np, model)
    assert history_np["train"]["loss"] == history["train"]["loss"]
    assert history_np["step"] == history["step"] and type(history_np["step"][-1]) is int


def test_train_takes_a_numpy_learning_rate_and_fraction():
    optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=np.float32(0.1))
    options = dict(optimizer=optimizer, accumulate=np.int64(2), batch_size=4, epochs=1)
    model_np, history_np = _fit(validation_split=np.float32(0.25), **options)
    model, history = _fit(validation_split=0.25, **options)
    assert tree_equal(model_np, model) and history_np["eval"] == history["eval"]


def test_train_refuses_a_numpy_bool_as_a_count():
    # beartype (on in tests) may see the annotation first; either way the message names it.
    with pytest.raises(
        TypeError, match=r"batch_size must be a positive int; got np.True_|'batch_size'"
    ):
        _fit(batch_size=np.bool_(True))


def test_models_take_numpy_sizes():
    key = jax.random.key(0)
    mlp = zoo.MLP(np.int64(4), np.int32(3), (np.int64(8),), dropout=np.float32(0.25), key=key)
    assert tree_equal(mlp, zoo.MLP(4, 3, (8,), dropout=0.25, key=key))
    assert type(mlp.in_size) is int and mlp.hidden == (8,)
    table = zoo.Embedding(np.int64(10), np.int64(4), padding_idx=np.int64(0), key=key)
    assert tree_equal(table, zoo.Embedding(10, 4, padding_idx=0, key=key))
    mf = zoo.MatrixFactorization(np.int64(5), np.int64(6), np.int64(4), key=key)
    assert tree_equal(mf, zoo.MatrixFactorization(5, 6, 4, key=key))
    with pytest.raises(TypeError, match=r"in_size must be a positive int; got np.True_|'in_size'"):
        zoo.MLP(np.bool_(True), 3, key=key)


@pytest.mark.parametrize("name", ["sgd", "rowwise_adagrad", "adagrad", "lazy_adam"])
def test_sparse_optimizers_take_a_numpy_learning_rate(name):
    make = getattr(zoo.sparse, name)
    table = zoo.Embedding(6, 2, key=jax.random.key(0))
    ids = jnp.array([1, 4])

    def step(learning_rate):
        optimizer = make(learning_rate)
        loss = lambda t, i: jnp.sum(t(i) ** 2)  # noqa: E731
        _, new, _ = zoo.sparse.value_and_update(loss, optimizer)(table, optimizer.init(table), ids)
        return new

    assert tree_equal(step(np.float32(0.5)), step(0.5))


def test_evaluation_data_and_stopping_take_numpy_scalars():
    model = zoo.MLP(4, 3, (8,), key=jax.random.key(0))
    data = _classification()
    assert zoo.evaluate(model, data, batch_size=np.int64(5)) == zoo.evaluate(
        model, data, batch_size=5
    )
    stopping = zoo.EarlyStopping("accuracy", patience=np.int64(2), min_delta=np.float32(0.0))
    assert stopping.decision({"eval": {"accuracy": [0.5, 0.4, 0.3]}}).stop
    key = jax.random.key(0)
    interactions = zoo.data.synthetic_interactions(np.int64(30), np.int64(40), key=key)
    assert interactions.num_users == 30
    rows = zoo.data.sequences(interactions, max_len=np.int64(5))
    assert rows["input"].shape[1] == 5
    sampler = zoo.recsys.NegativeSampler(np.int64(40))
    assert sampler(key, jnp.zeros(3, jnp.int32), 2).shape == (3, 2)


def test_checkpoints_take_numpy_counts(tmp_path):
    with zoo.Checkpoints(tmp_path, keep=np.int64(2), every_steps=np.int64(5)) as checkpoints:
        assert checkpoints.every_steps == 5 and type(checkpoints.every_steps) is int


# -- keys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda: zoo.MLP(4, 3, key=0),
        lambda: zoo.Embedding(4, 3, key=0),
        lambda: zoo.MatrixFactorization(4, 3, key=0),
        lambda: zoo.TwoTower(4, 3, key=0),
        lambda: zoo.SASRec(10, dim=8, key=0),
        lambda: zoo.data.synthetic_interactions(20, 30, key=0),
        lambda: zoo.recsys.NegativeSampler(10)(0, jnp.zeros(3, jnp.int32), 2),
        lambda: _fit(key=0),
    ],
    ids=["mlp", "embedding", "mf", "two-tower", "sasrec", "synthetic", "sampler", "train"],
)
def test_an_int_seed_as_key_is_named(call):
    # beartype (on in tests) may see the annotation first; either way the message names `key`.
    with pytest.raises(
        TypeError, match=r"key must be a PRNG key such as jax.random.key\(0\)|'key'"
    ):
        call()


# -- zoo.save keeps scalar leaves ------------------------------------------------------------------


class _WithScalars(eqx.Module):
    weight: jax.Array
    steps: int
    rate: float
    name: str
    flag: bool
    scale: np.float32


def test_save_round_trips_scalar_leaves_exactly(tmp_path):
    model = _WithScalars(jnp.arange(3.0), 7, 0.1 + 0.2, "run-é", True, np.float32(1.5))
    zoo.save(tmp_path / "m", model)
    template = _WithScalars(jnp.zeros(3), 0, 0.0, "", False, np.float32(0))
    loaded = zoo.load(tmp_path / "m", like=template)
    assert tree_equal(loaded.weight, model.weight)
    for field in ("steps", "rate", "name", "flag", "scale"):
        saved, back = getattr(model, field), getattr(loaded, field)
        assert back == saved and type(back) is type(saved), field


def test_a_saved_scalar_without_a_place_in_like_is_refused(tmp_path):
    zoo.save(tmp_path / "m", {"w": jnp.ones(2), "n": 3})
    with pytest.raises(ValueError, match=r"at \['n'\]: the save holds the value 3 there"):
        zoo.load(tmp_path / "m", like={"w": jnp.ones(2), "n": None})
