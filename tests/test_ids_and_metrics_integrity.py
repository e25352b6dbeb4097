"""Never a wrapped id or an unearned figure: ids beyond int32 are refused wherever they enter,
loaders read integers exactly, metrics of non-finite scores are never a figure, and evaluation
protocols check their preconditions."""

import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
import zoo._checks

from .helpers import train

WIDE = 2**32 + 3  # JAX without x64 stores this int64 as int32: row 3


def _wide(length: int = 3) -> np.ndarray:
    ids = np.zeros(length, np.int64)
    ids[-1] = WIDE
    return ids


def test_the_premise_jax_wraps_int64_silently():
    if jax.config.jax_enable_x64:
        pytest.skip("with x64, JAX keeps int64 and nothing wraps")
    assert int(jnp.asarray(np.array([WIDE]))[0]) == 3


def test_fits_int32_names_the_value_its_place_and_the_range():
    with pytest.raises(
        ValueError,
        match=r"ids must hold integers that fit int32, in "
        r"\[-2147483648, 2147483647\]; got 4294967299 at \[2\]",
    ):
        zoo._checks.fits_int32("ids", _wide())
    with pytest.raises(ValueError, match=r"fit int8, in \[-128, 127\]; got 300"):
        zoo._checks.fits_int32("ids", np.array([1, 300]), dtype=np.int8)
    fitting = np.array([0, 2**31 - 1, -(2**31)], np.int64)
    np.testing.assert_array_equal(zoo._checks.fits_int32("ids", fitting), fitting)
    floats = np.array([1e20])  # not integers: other checks own them
    assert zoo._checks.fits_int32("x", floats) is not None


def _interactions_with(column: np.ndarray, name: str) -> dict:
    other = "item" if name == "user" else "user"
    return {name: column, other: np.zeros(len(column), np.int32)}


def _small():
    data = zoo.data.synthetic_interactions(20, 12, interactions_per_user=4, key=jax.random.key(0))
    return zoo.data.leave_last_out(data)


def _mf(train):
    return zoo.MatrixFactorization(train.num_users, train.num_items, key=jax.random.key(1))


_ENTRIES = {
    "Embedding": (
        lambda: zoo.Embedding(10, 4, key=jax.random.key(0))(_wide()),
        r"^ids must",
    ),
    "Embedding, Python int": (
        lambda: zoo.Embedding(10, 4, key=jax.random.key(0))(WIDE),
        r"^ids must",
    ),
    "SASRec": (
        lambda: zoo.SASRec(10, dim=8, num_blocks=1, max_len=5, key=jax.random.key(0))(_wide()),
        r"^sequence must",
    ),
    "train data": (
        lambda: train(
            zoo.MLP(2, 3, (4,), key=jax.random.key(0)),
            {"x": np.zeros((3, 2), np.float32), "y": _wide()},
            progress=False,
        ),
        r"^data\['y'\] must",
    ),
    "train batches": (
        lambda: train(
            zoo.MLP(2, 3, (4,), key=jax.random.key(0)),
            [{"x": np.zeros((3, 2), np.float32), "y": _wide()}],
            progress=False,
        ),
        r"^batch\['y'\] must",
    ),
    "evaluate data": (
        lambda: zoo.evaluate(
            zoo.MLP(2, 3, (4,), key=jax.random.key(0)),
            {"x": np.zeros((3, 2), np.float32), "y": _wide()},
        ),
        r"^data\['y'\] must",
    ),
    "Interactions": (
        lambda: zoo.data.Interactions(
            _interactions_with(_wide(), "item"), user_ids=np.arange(1), item_ids=np.arange(4)
        ),
        r"^Interactions\['item'\] must",
    ),
    "NegativeSampler interactions": (
        lambda: zoo.recsys.NegativeSampler(
            4, interactions=_interactions_with(_wide(), "user"), exclude_positives=True
        ),
        r"^interactions\['user'\] must",
    ),
    "NegativeSampler users": (
        lambda: zoo.recsys.NegativeSampler(4)(jax.random.key(0), _wide(), 2),
        r"^users must",
    ),
    "ranking_metrics": (
        lambda: zoo.recsys.ranking_metrics(jnp.zeros((3, 5)), _wide()[:, None]),
        r"^targets must",
    ),
    "evaluate_ranking": (
        lambda: zoo.recsys.evaluate_ranking(
            _mf(_small()[0]), _small()[0], _interactions_with(_wide(), "user")
        ),
        r"^test\['user'\] must",
    ),
    "TwoTower item_features": (
        lambda: zoo.TwoTower(3, 3, item_features=_wide(), key=jax.random.key(0)),
        r"^item_features must",
    ),
    "evaluate_sampled": (
        lambda: zoo.recsys.evaluate_sampled(
            _mf(_small()[0]), _interactions_with(_wide(), "item"), _small()[1]
        ),
        r"^train\['item'\] must",
    ),
}


@pytest.mark.parametrize("entry", list(_ENTRIES))
def test_an_id_beyond_int32_is_refused_at_every_entry(entry):
    call, argument = _ENTRIES[entry]
    if jax.config.jax_enable_x64:
        pytest.skip("with x64, int64 ids are stored as they are")
    with pytest.raises(ValueError, match=argument + r".* fit int32.*got 4294967299"):
        call()


def _movielens(tmp: pathlib.Path, lines: list[str], name="u.data", header=None) -> pathlib.Path:
    folder = tmp / "ml"
    folder.mkdir()
    separator = {"u.data": "\t", "ratings.dat": "::", "ratings.csv": ","}[name]
    body = [header] if header else []
    body += [separator.join(line.split()) for line in lines]
    (folder / name).write_text("\n".join(body) + "\n")
    return folder


@pytest.mark.parametrize(
    "name, header",
    [("u.data", None), ("ratings.dat", None), ("ratings.csv", "userId,movieId,rating,timestamp")],
)
def test_movielens_ids_beyond_2_to_the_53_stay_distinct_and_exact(tmp_path, name, header):
    big = 2**53  # float64 cannot tell 2**53 from 2**53 + 1
    lines = [f"1 {big} 4 10", f"1 {big + 1} 3 11", f"{2**62} {big + 1} 5 12"]
    ratings = zoo.data.movielens(_movielens(tmp_path, lines, name, header))
    assert ratings.item_ids.tolist() == [big, big + 1]
    assert ratings.user_ids.tolist() == [1, 2**62]
    assert ratings["item"].tolist() == [0, 1, 1]
    assert ratings["timestamp"].tolist() == [10, 11, 12]


@pytest.mark.parametrize(
    "field, message",
    [
        ("1e20", "expected integer user, item and timestamp"),
        ("12.0", "expected integer user, item and timestamp"),
        ("1_000", "expected integer user, item and timestamp"),
        (str(10**20), "user, item and timestamp must fit int64, at most 9223372036854775807"),
    ],
)
def test_movielens_refuses_ids_it_cannot_read_exactly_with_file_and_line(tmp_path, field, message):
    folder = _movielens(tmp_path, ["1 2 3 4", f"1 {field} 3 5"])
    with pytest.raises(ValueError, match=rf"ml/u\.data:2: {message}"):
        zoo.data.movielens(folder)


def _rated() -> zoo.data.Interactions:
    columns = {"user": np.zeros(2, np.int32), "item": np.arange(2), "rating": np.array([3.0, 5.0])}
    return zoo.data.Interactions(columns, user_ids=np.arange(1), item_ids=np.arange(2))


def _nan_model(model):
    return jax.tree.map(lambda leaf: leaf * jnp.nan if eqx.is_array(leaf) else leaf, model)


def test_evaluate_never_reports_a_figure_of_non_finite_predictions():
    data = {"x": np.zeros((6, 2), np.float32), "y": np.zeros(6, np.int32)}  # all class 0
    model = zoo.MLP(2, 3, (4,), key=jax.random.key(0))
    assert zoo.evaluate(model, data)["accuracy"] == 1.0  # a finite model: a true figure
    with pytest.raises(ValueError, match=r"model predictions on data must be finite; 6 of 6"):
        zoo.evaluate(_nan_model(model), data, batch_size=4)  # argmax(NaN) would be class 0
    data["x"][4, 1] = np.inf
    with pytest.raises(ValueError, match=r"data\['x'\] must be finite; 1 of 6 .* at row 4"):
        zoo.evaluate(model, data, batch_size=4)


def test_metric_functions_give_nan_for_non_finite_scores():
    predictions = jnp.array([[jnp.nan, 0.0, 0.0], [2.0, 0.0, 0.0]])
    np.testing.assert_array_equal(
        zoo.metrics.accuracy(predictions, jnp.array([0, 0])), [np.nan, 1.0]
    )
    scores = jnp.array([[1.0, 2.0, 3.0], [jnp.nan, 0.0, 1.0], [jnp.inf, 0.0, 1.0]])
    ranking = zoo.recsys.ranking_metrics(scores, jnp.array([[2], [2], [2]]), k=1)
    for values in ranking.values():
        assert float(values[0]) in (0.0, 1.0) and np.isnan(values[1:]).all()
    excluded = zoo.recsys.ranking_metrics(jnp.array([[0.0, -jnp.inf]]), jnp.array([[1]]), k=1)
    assert np.isnan(excluded["mrr"]).all()  # a held-out item that was excluded: no rank
    sampled = zoo.recsys.sampled_metrics(scores, k=1)
    assert all(np.isnan(values[1:]).all() and np.isfinite(values[0]) for values in sampled.values())
    assert np.isnan(zoo.recsys.auc(jnp.array([1.0, jnp.nan]), jnp.array([True, False])))


@pytest.mark.parametrize("evaluation", ["evaluate_ranking", "evaluate_sampled"])
def test_ranking_evaluations_refuse_non_finite_scores(evaluation):
    train, test = _small()
    model = _mf(train)
    weight = model.user_embedding.weight.at[2].set(jnp.inf)
    broken = eqx.tree_at(lambda m: m.user_embedding.weight, model, weight)
    evaluate = getattr(zoo.recsys, evaluation)
    # 12 items, 4 per user: 8 candidates besides the held-out one, so k=5 (at k=10 any
    # ranking would hit, and every user would be dropped).
    kwargs = {"num_negatives": 5} if evaluation == "evaluate_sampled" else {"k": 5}
    assert np.isfinite(list(evaluate(model, train, test, **kwargs)["model"].values())).all()
    with pytest.raises(ValueError, match=r"model scores must be finite; 1 of 20"):
        evaluate(broken, train, test, **kwargs)


def test_exclusive_sampling_is_exact_and_uniform_over_what_is_left():
    train = {"user": np.array([0, 0, 0, 1, 1]), "item": np.array([0, 2, 4, 1, 5])}
    sampler = zoo.recsys.NegativeSampler(6, interactions=train, exclude_positives=True)
    draws = np.asarray(sampler(jax.random.key(0), jnp.array([0, 1, 2]), 6000))
    expected = {0: [1, 3, 5], 1: [0, 2, 3, 4], 2: [0, 1, 2, 3, 4, 5]}  # 2: no positives
    for user, left in expected.items():
        counts = np.bincount(draws[user], minlength=6)
        assert np.flatnonzero(counts).tolist() == left
        np.testing.assert_allclose(counts[left] / 6000, 1 / len(left), atol=0.03)


def test_sampled_protocol_preconditions():
    train, test = _small()  # 12 items, 4 per user: 8 left for every user
    model = _mf(train)
    zoo.recsys.evaluate_sampled(model, train, test, num_negatives=8, baselines=False)
    with pytest.raises(ValueError, match=r"num_negatives must be at most .* got 9, .* only 8"):
        zoo.recsys.evaluate_sampled(model, train, test, num_negatives=9)
    with pytest.raises(ValueError, match="num_negatives must be a positive int; got 0"):
        zoo.recsys.evaluate_sampled(model, train, test, num_negatives=0)
    everything = {"user": np.zeros(3, np.int32), "item": np.arange(3)}
    with pytest.raises(ValueError, match="leave user 0 no item to sample as a negative"):
        zoo.recsys.NegativeSampler(3, interactions=everything, exclude_positives=True)


@pytest.mark.parametrize("evaluation", ["evaluate_ranking", "evaluate_sampled"])
def test_a_held_out_pair_listed_twice_counts_once(evaluation):
    train, test = _small()
    twice = {name: np.concatenate([test[name], test[name][3:4]]) for name in ("user", "item")}
    run = getattr(zoo.recsys, evaluation)
    kwargs = {"num_negatives": 8} if evaluation == "evaluate_sampled" else {"k": 5}
    assert run(_mf(train), train, twice, **kwargs) == run(_mf(train), train, test, **kwargs)


def test_evaluations_refuse_users_the_model_does_not_have():
    train, test = _small()
    model = zoo.MatrixFactorization(10, train.num_items, key=jax.random.key(1))  # 20 users
    with pytest.raises(ValueError, match=r"users must lie in \[0, model.num_users\) = \[0, 10\)"):
        zoo.recsys.evaluate_ranking(model, train, test)


def test_in_batch_softmax_needs_a_second_row_to_compare_with():
    model = zoo.TwoTower(5, 5, key=jax.random.key(0))
    loss = zoo.recsys.in_batch_softmax_loss()
    two = {"user": jnp.array([0, 1]), "item": jnp.array([2, 3])}
    assert np.isfinite(loss(model, two)) and float(loss(model, two)) > 0
    one = {name: column[:1] for name, column in two.items()}
    with pytest.raises(ValueError, match="needs batches of at least 2 interactions"):
        loss(model, one)
    with pytest.raises(ValueError, match="needs batches of at least 2 interactions"):
        jax.jit(loss)(model, one)  # the batch size is static: refused while tracing


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: zoo.TwoTower(5, 5, temperature=float("inf"), key=jax.random.key(0)),
            "temperature must be a finite float > 0; got inf",
        ),
        (
            lambda: zoo.TwoTower(5, 5, temperature=float("nan"), key=jax.random.key(0)),
            "temperature must be a finite float > 0; got nan",
        ),
        (
            lambda: zoo.recsys.NegativeSampler(5, alpha=float("inf")),
            "alpha must be a finite float >= 0; got inf",
        ),
        (
            lambda: zoo.recsys.in_batch_softmax_loss(item_counts=np.array([1.0, np.inf])),
            "item_counts must be finite counts >= 0",
        ),
        (
            lambda: zoo.data.synthetic_interactions(
                5, 30, popularity=np.inf, key=jax.random.key(0)
            ),
            "popularity must be a finite float >= 0; got inf",
        ),
        (
            lambda: zoo.data.synthetic_sequences(5, 30, order=np.nan, key=jax.random.key(0)),
            r"order must be a finite float in \[0, 1\]; got nan",
        ),
        (
            lambda: zoo.data.implicit(_rated(), threshold=np.nan),
            "threshold must be a finite float; got nan",
        ),
    ],
)
def test_hyperparameters_that_make_a_model_useless_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()
