"""Ranking metrics against straightforward NumPy, ties included; evaluation end to end."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo

from .helpers import planted_split


def _pessimistic_ranks(row: np.ndarray, candidates: np.ndarray, item: int) -> int:
    """1 + the number of other candidates scoring at least as high as `item`."""
    others = candidates & (np.arange(len(row)) != item)
    return 1 + int(np.sum(row[others] >= row[item]))


def _numpy_ranking(scores, excluded, held_out, k):
    """Per-user HR@k, recall@k, NDCG@k and MRR by the textbook definitions."""
    rows = []
    for row, excluded_row, targets in zip(scores, excluded, held_out, strict=True):
        if not targets:
            rows.append((0.0, 0.0, 0.0, 0.0))
            continue
        ranks = [_pessimistic_ranks(row, ~excluded_row, t) for t in targets]
        hits = [r for r in ranks if r <= k]
        ideal = sum(1 / np.log2(r + 1) for r in range(1, min(k, len(targets)) + 1))
        rows.append(
            (
                float(bool(hits)),
                len(hits) / len(targets),
                sum(1 / np.log2(r + 1) for r in hits) / ideal,
                1 / min(ranks),
            )
        )
    return np.array(rows)


def _random_case(seed, users=12, items=15):
    """Integer scores (many ties), exclusions, and 0 to 3 held-out items per user."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, (users, items)).astype(np.float32)
    excluded = rng.random((users, items)) < 0.3
    held_out = []
    for u in range(users):
        free = np.flatnonzero(~excluded[u])
        held_out.append(sorted(rng.choice(free, rng.integers(0, 4), replace=False).tolist()))
    return scores, excluded, held_out


_ranking_metrics = jax.jit(
    lambda scores, targets: zoo.recsys.ranking_metrics(scores, targets, k=(1, 5))
)


@pytest.mark.parametrize("seed", [0, 1])
def test_ranking_metrics_match_numpy_with_ties(seed):
    scores, excluded, held_out = _random_case(seed)
    targets = np.full((len(scores), 3), -1, np.int32)
    for u, items in enumerate(held_out):
        targets[u, : len(items)] = items
    masked = np.where(excluded, -np.inf, scores).astype(np.float32)
    got = _ranking_metrics(masked, targets)
    for k in (1, 5):
        expected = _numpy_ranking(scores, excluded, held_out, k)
        for column, name in enumerate((f"hr@{k}", f"recall@{k}", f"ndcg@{k}", "mrr")):
            np.testing.assert_allclose(got[name], expected[:, column], rtol=1e-6, err_msg=name)


def test_all_equal_scores_rank_each_held_out_item_last():
    metrics = _ranking_metrics(np.zeros((1, 10), np.float32), np.array([[3]], np.int32))
    assert float(metrics["mrr"][0]) == pytest.approx(0.1)  # rank 10 of 10, not 1
    assert float(metrics["hr@5"][0]) == 0.0


class _Table(eqx.Module):
    """Scores read from a fixed (users, items) table: the pairwise evaluation path."""

    scores: jax.Array
    num_items: int = eqx.field(static=True)

    def __call__(self, user, item, *, key=None):
        return self.scores[user, item]


class _Vectors(zoo.recsys.Factorized):
    """The same table as one-hot users times item columns: the matrix-product path."""

    scores: jax.Array
    num_items: int = eqx.field(static=True)

    def user_vector(self, user):
        return jax.nn.one_hot(user, self.scores.shape[0])

    def item_vector(self, item):
        return self.scores[:, item]


def _splits(excluded, held_out):
    train_users, train_items = np.nonzero(excluded)
    test_pairs = [(u, i) for u, items in enumerate(held_out) for i in items]
    test_users, test_items = np.array(test_pairs, np.int32).T
    return (
        {"user": train_users.astype(np.int32), "item": train_items.astype(np.int32)},
        {"user": test_users, "item": test_items},
    )


@pytest.mark.parametrize("model_type", [_Table, _Vectors])
def test_evaluate_ranking_matches_numpy_over_padded_batches(model_type):
    scores, excluded, held_out = _random_case(seed=2)
    train, test = _splits(excluded, held_out)
    model = model_type(jnp.asarray(scores), scores.shape[1])
    report = zoo.recsys.evaluate_ranking(model, train, test, k=5, batch_size=4, baselines=False)
    expected = _numpy_ranking(scores, excluded, held_out, 5)[[bool(t) for t in held_out]]
    names = ("hr@5", "recall@5", "ndcg@5", "mrr")
    got = [report["model"][name] for name in names]
    np.testing.assert_allclose(got, expected.mean(axis=0), rtol=1e-5)


def test_sampled_metrics_and_auc_match_numpy_with_ties():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, (20, 11)).astype(np.float32)
    got = jax.jit(lambda s: zoo.recsys.sampled_metrics(s, k=3))(scores)
    ranks = 1 + np.sum(scores[:, 1:] >= scores[:, :1], axis=1)
    np.testing.assert_allclose(got["hr@3"], ranks <= 3)
    np.testing.assert_allclose(got["ndcg@3"], np.where(ranks <= 3, 1 / np.log2(ranks + 1), 0))
    np.testing.assert_allclose(got["mrr"], 1 / ranks)
    wins = (scores[:, :1] > scores[:, 1:]) + 0.5 * (scores[:, :1] == scores[:, 1:])
    np.testing.assert_allclose(got["auc"], wins.mean(axis=1), rtol=1e-6)

    flat, labels = scores.ravel(), rng.random(scores.size) < 0.3
    pairs = flat[labels][:, None] - flat[~labels][None, :]
    expected_auc = np.mean((pairs > 0) + 0.5 * (pairs == 0))
    got_auc = jax.jit(zoo.recsys.auc)(flat, labels)
    assert float(got_auc) == pytest.approx(expected_auc, rel=1e-6)


def test_baselines_and_sampled_protocol(getkey):
    train, test = planted_split(getkey())
    popularity = zoo.recsys.Popularity(train, train.num_items)
    full = zoo.recsys.evaluate_ranking(popularity, train, test, k=10, key=getkey())
    # Random: about 10 of the 181 candidates; popularity: the same as the model evaluated.
    assert 0.02 < full["random"]["hr@10"] < 0.1
    assert full["popularity"] == full["model"]
    assert full["popularity"]["hr@10"] > 2 * full["random"]["hr@10"]
    sampled = zoo.recsys.evaluate_sampled(
        popularity, train, test, num_negatives=100, k=10, baselines=False, key=getkey()
    )
    assert set(sampled["model"]) == {"hr@10", "ndcg@10", "mrr", "auc"}
    assert sampled["model"]["auc"] > 0.7
    assert sampled["model"]["hr@10"] > full["model"]["hr@10"]  # 101 candidates, not 181
    table = zoo.recsys.format_report(full)
    assert "| popularity |" in table and "(x1.00)" in table


def test_negative_sampler_skips_positives_and_follows_popularity(getkey):
    train = {"user": np.array([0, 0, 0, 1]), "item": np.array([0, 1, 2, 3])}
    sampler = zoo.recsys.NegativeSampler(
        5, interactions=train, exclude_positives=True, max_redraws=40
    )
    popular = zoo.recsys.NegativeSampler(5, distribution="popularity", interactions=train)
    users = jnp.array([0, 1, 2])
    draw = eqx.filter_jit(lambda sampler, key, users, num: sampler(key, users, num))
    negatives = np.asarray(draw(sampler, getkey(), users, 200))
    assert not np.isin(negatives[0], [0, 1, 2]).any() and set(negatives[0]) == {3, 4}
    assert 3 not in negatives[1] and set(negatives[2]) == set(range(5))  # user 2: no positives
    assert np.asarray(sampler.is_positive(jnp.array([0, 1]), jnp.array([2, 2]))).tolist() == [
        True,
        False,
    ]

    draws = np.asarray(draw(popular, getkey(), jnp.zeros(4000, jnp.int32), 1)).ravel()
    np.testing.assert_allclose(np.bincount(draws, minlength=5) / 4000, [0.25] * 4 + [0], atol=0.03)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"distribution": "zipf"}, "distribution must be"),
        ({"distribution": "popularity"}, "interactions are needed"),
        ({"exclude_positives": True}, "interactions are needed"),
    ],
)
def test_negative_sampler_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        zoo.recsys.NegativeSampler(10, **kwargs)


def test_held_out_pairs_also_in_train_stay_candidates_and_bad_k_is_refused(getkey):
    train, test = planted_split(getkey())
    model = zoo.recsys.Popularity(train, train.num_items)
    # Repeat consumption: each held-out item is one the user had; it is still ranked (the
    # user's other training items are excluded), so a popular one is often a hit.
    repeats = zoo.recsys.evaluate_ranking(model, train, train.take(np.arange(5)), baselines=False)
    assert repeats.users == 1 and repeats["model"]["hr@10"] in (0.0, 1.0)
    with pytest.raises(ValueError, match="k must be a positive int"):
        zoo.recsys.evaluate_ranking(model, train, test, k=0)
    with pytest.raises(TypeError, match="num_items attribute"):
        zoo.recsys.evaluate_ranking(lambda u, i: 0.0, train, test)
