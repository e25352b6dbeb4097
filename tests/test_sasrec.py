"""SASRec: sequence data, the model's causality and padding, its losses on both training paths,
and its full-ranking lift over order-blind models on data with a planted order."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import zoo
from zoo._cli import main
from zoo.data._sequences import histories

from .helpers import tree_allclose


def _interactions(users, items, timestamps, num_users, num_items):
    arrays = {
        "user": np.asarray(users, np.int32),
        "item": np.asarray(items, np.int32),
        "timestamp": np.asarray(timestamps, np.int64),
    }
    return zoo.data.Interactions(
        arrays, user_ids=np.arange(num_users), item_ids=np.arange(num_items)
    )


def test_sequences_are_time_ordered_truncated_and_left_padded():
    # User 0: items 5, 6, 7, 8 at times 3, 1, 1, 2 (6 and 7 tie: row order decides).
    # User 1 has one event (no target, no row); user 2 has 2, 3.
    data = _interactions([0, 1, 0, 2, 0, 0, 2], [5, 4, 6, 2, 7, 8, 3], [3, 0, 1, 0, 1, 2, 5], 3, 9)
    rows = zoo.data.sequences(data, max_len=2)
    pad = 9
    np.testing.assert_array_equal(rows["user"], [0, 2])
    np.testing.assert_array_equal(rows["input"], [[7, 8], [pad, 2]])  # 6, 7, 8 cut to 7, 8
    np.testing.assert_array_equal(rows["target"], [[8, 5], [pad, 3]])
    np.testing.assert_array_equal(histories(data, 3), [[7, 8, 5], [pad, pad, 4], [pad, 2, 3]])


def test_sequences_of_a_training_split_never_hold_the_held_out_item(getkey):
    data = zoo.data.synthetic_sequences(60, 40, length=12, key=getkey())
    train, test = zoo.data.leave_last_out(data)
    rows = zoo.data.sequences(train, max_len=50)
    held_out = dict(zip(test["user"].tolist(), test["item"].tolist(), strict=True))
    for user, inputs, targets in zip(rows["user"], rows["input"], rows["target"], strict=True):
        assert held_out[int(user)] not in set(inputs) | set(targets)
    for user, history in enumerate(histories(train, 50)):
        assert held_out[user] not in set(history)
    # Every target is the input one position later: the rows are one sequence shifted.
    real = rows["input"][:, :-1] != 40
    np.testing.assert_array_equal(rows["input"][:, 1:][real], rows["target"][:, :-1][real])
    assert np.all((rows["input"] == 40) == (rows["target"] == 40))


def test_synthetic_sequences_follow_the_key_and_never_repeat_an_item(getkey):
    key = getkey()
    data = zoo.data.synthetic_sequences(50, 30, length=10, key=key)
    again = zoo.data.synthetic_sequences(50, 30, length=10, key=key)
    other = zoo.data.synthetic_sequences(50, 30, length=10, key=getkey())
    np.testing.assert_array_equal(data["item"], again["item"])
    assert not np.array_equal(data["item"], other["item"])
    walks = data["item"].reshape(50, 10)
    assert all(len(set(walk)) == 10 for walk in walks)


def _model(key, *, num_items=30, max_len=8, dropout=0.0, **kwargs):
    return zoo.SASRec(
        num_items,
        dim=16,
        num_blocks=2,
        num_heads=2,
        max_len=max_len,
        dropout=dropout,
        key=key,
        **kwargs,
    )


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_changing_later_items_leaves_earlier_scores_unchanged(getkey, dropout):
    model, key = _model(getkey(), dropout=dropout), getkey()
    sequence = jnp.array([3, 7, 1, 12, 5, 9, 2, 4])
    changed = sequence.at[5:].set(jnp.array([20, 30, 0]))  # 30 is the padding id
    for call in (lambda s: model(s), lambda s: model(s, key=key)):
        before, after = call(sequence), call(changed)
        assert tree_allclose(before[:5], after[:5], rtol=1e-5, atol=1e-6)
        assert not np.allclose(before[5:7], after[5:7])


def test_a_left_padded_sequence_scores_as_the_unpadded_one(getkey):
    model = _model(getkey())
    sequence = jnp.array([3, 7, 1])
    padded = jnp.concatenate([jnp.full(5, model.num_items), sequence])
    assert tree_allclose(model(padded)[-3:], model(sequence), rtol=1e-5, atol=1e-6)
    assert not np.any(model(padded)[:5])  # padding positions are zeros
    assert tree_allclose(model.scores(padded)[-1], model.scores(sequence)[-1], atol=1e-5)


def test_the_ranker_scores_users_by_their_latest_training_items(getkey):
    model = _model(getkey(), max_len=4)
    train = _interactions([0, 0, 1, 0, 0, 0], [3, 4, 9, 5, 6, 8], [0, 1, 0, 2, 3, 4], 3, 30)
    ranker = model.ranker(train)
    expected = model(jnp.array([4, 5, 6, 8]))[-1]  # user 0's latest four items
    assert tree_allclose(ranker.user_vector(jnp.array(0)), expected, atol=1e-6)
    assert not np.any(ranker.user_vector(jnp.array(2)))  # no events: no preference
    assert tree_allclose(
        ranker.embed_items(jnp.array([3, 9])), model.item_embedding.weight[jnp.array([3, 9])]
    )


def test_sasrec_saves_and_loads_without_a_template(getkey, tmp_path):
    model = _model(getkey(), dropout=0.2)
    zoo.save(tmp_path / "sasrec", model)
    assert tree_allclose(zoo.load(tmp_path / "sasrec"), model)


def _sequence_data(key, num_users=40, num_items=25, max_len=6):
    train, _ = zoo.data.leave_last_out(
        zoo.data.synthetic_sequences(num_users, num_items, length=8, key=key)
    )
    return train, zoo.data.sequences(train, max_len=max_len)


@pytest.mark.parametrize("kind", ["bce", "sampled_softmax"])
def test_sampled_losses_train_the_same_model_sparse_and_dense(getkey, kind):
    # With SGD the sparse update of the item table is exactly the dense one.
    train, rows = _sequence_data(getkey())
    model = zoo.SASRec(25, dim=8, num_blocks=1, num_heads=2, max_len=6, dropout=0.2, key=getkey())
    key = getkey()
    sampler = zoo.recsys.NegativeSampler(25, interactions=train, exclude_positives=True)
    loss = zoo.recsys.sequence_loss(kind, num_negatives=3, sampler=sampler)
    sparse = zoo.sparse.partition(dense=optax.sgd(0.5), embeddings=zoo.sparse.sgd(0.5))
    trained = {
        name: zoo.train(
            model, rows, loss=loss, optimizer=opt, epochs=2, batch_size=16, key=key, callbacks=[]
        )
        for name, opt in (("sparse", sparse), ("dense", optax.sgd(0.5)))
    }
    (sparse_model, sparse_history), (dense_model, dense_history) = trained.values()
    assert tree_allclose(sparse_model, dense_model, rtol=1e-4, atol=1e-5)
    assert not tree_allclose(sparse_model.item_embedding, model.item_embedding)
    np.testing.assert_allclose(
        sparse_history["train"]["loss"], dense_history["train"]["loss"], rtol=1e-5
    )


def test_sampled_softmax_subtracts_log_q_and_masks_accidental_hits(getkey):
    model, key = _model(getkey(), num_items=3, max_len=4), getkey()
    train = _interactions([0, 0, 0, 1], [0, 0, 1, 2], [0, 1, 2, 0], 2, 3)  # item 0 twice
    sampler = zoo.recsys.NegativeSampler(3, distribution="popularity", interactions=train)
    batch = {
        "user": jnp.array([0]),
        "input": jnp.array([[3, 0, 1, 2]]),
        "target": jnp.array([[3, 1, 2, 0]]),
    }
    loss = zoo.recsys.sequence_loss("sampled_softmax", num_negatives=5, sampler=sampler)
    value = loss(model, batch, key)
    # By hand: the same draws, each logit minus log q, a draw equal to the target dropped.
    negatives = sampler(jax.random.split(key)[1], batch["user"], 5)[0]
    log_q = jnp.log(jnp.array([2.0, 1.0, 1.0]) / 4.0)
    hidden = model(batch["input"][0])
    table = model.item_embedding.weight
    expected = []
    for t in (1, 2, 3):
        target = batch["target"][0, t]
        logits = [hidden[t] @ table[target] - log_q[target]]
        logits += [hidden[t] @ table[n] - log_q[n] for n in negatives if n != target]
        expected.append(jax.nn.logsumexp(jnp.stack(logits)) - logits[0])
    np.testing.assert_allclose(value, np.mean(expected), rtol=1e-5)


def test_sasrec_doubles_matrix_factorization_and_triples_popularity_on_ordered_data(getkey):
    data = zoo.data.synthetic_sequences(400, 150, length=15, key=jax.random.key(0))
    train, test = zoo.data.leave_last_out(data)
    model = zoo.SASRec(
        150, dim=32, num_blocks=1, num_heads=1, max_len=15, dropout=0.2, key=jax.random.key(1)
    )
    model, _ = zoo.train(
        model,
        zoo.data.sequences(train, max_len=15),
        loss=zoo.recsys.sequence_loss("softmax"),
        optimizer=optax.adam(3e-3),
        epochs=15,
        batch_size=32,
        key=jax.random.key(2),
        callbacks=[],
    )
    report = zoo.recsys.evaluate_ranking(model, train, test)
    mf = zoo.MatrixFactorization(400, 150, 32, key=jax.random.key(1))
    sampler = zoo.recsys.NegativeSampler(150, interactions=train, exclude_positives=True)
    mf, _ = zoo.train(
        mf,
        train,
        loss=zoo.recsys.bpr_loss(sampler, num_negatives=4),
        optimizer=optax.adam(1e-2),
        epochs=20,
        batch_size=256,
        key=jax.random.key(2),
        callbacks=[],
    )
    mf_hr = zoo.recsys.evaluate_ranking(mf, train, test, baselines=False)["model"]["hr@10"]
    hr = report["model"]["hr@10"]
    assert hr >= 2 * mf_hr, (hr, mf_hr)
    assert hr >= 3 * report["popularity"]["hr@10"], report


def test_cli_trains_sasrec_with_a_sampled_softmax(tmp_path, capsys):
    args = [
        "train",
        "recommender",
        "--model",
        "sasrec",
        "--data",
        "synthetic:300x60",
        "--loss",
        "sampled-softmax",
        "--epochs",
        "3",
        "--dim",
        "16",
        "--max-len",
        "20",
        "--batch-size",
        "32",
        "--out",
        str(tmp_path),
        "--quiet",
    ]
    assert main(args) == 0
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["epoch"] == [1, 2, 3]
    losses = history["train"]["loss"]
    assert losses[-1] < losses[0]
    assert history["eval"]["hr@10"][-1] > history["baselines"]["random"]["hr@10"]
    assert "| model" in capsys.readouterr().out


def test_both_evaluations_rank_sasrec_by_each_users_history(getkey):
    data = zoo.data.synthetic_sequences(30, 40, length=6, key=getkey())
    train, test = zoo.data.leave_last_out(data)
    model = _model(getkey(), num_items=40, max_len=8)
    full = zoo.recsys.evaluate_ranking(model, train, test, baselines=False)["model"]
    ranker = model.ranker(train)
    assert full == zoo.recsys.evaluate_ranking(ranker, train, test, baselines=False)["model"]
    sampled = zoo.recsys.evaluate_sampled(model, train, test, num_negatives=10, key=getkey())
    assert set(sampled) == {"model", "popularity", "random"}
    assert 0 <= sampled["model"]["auc"] <= 1


def test_a_sequence_loss_refuses_a_sampler_of_another_catalogue(getkey):
    # A sampler of 2 items for a model of 3: item 2 never drawn, its log q read clamped.
    model = _model(getkey(), num_items=3, max_len=4)
    train = _interactions([0, 0], [0, 1], [0, 1], 1, 2)
    sampler = zoo.recsys.NegativeSampler(2, distribution="popularity", interactions=train)
    batch = {
        "user": jnp.array([0]),
        "input": jnp.array([[3, 0, 1, 2]]),
        "target": jnp.array([[3, 1, 2, 0]]),
    }
    loss = zoo.recsys.sequence_loss("sampled_softmax", num_negatives=5, sampler=sampler)
    with pytest.raises(ValueError, match=r"sequence_loss: the sampler draws from 2 items"):
        loss(model, batch, getkey())


@pytest.mark.parametrize("lengths", [[0, 3, 100, 37, 0, 64], [100] * 6])
def test_full_softmax_loss_is_the_masked_mean_over_every_position(getkey, lengths):
    # 600 positions: two chunks of the catalogue's scores, the second one partial; with
    # short rows the second holds no real position and is skipped. Either way: the loss and
    # its gradient of scoring every position and masking the padding.
    num_items, max_len = 40, 100
    model = zoo.SASRec(num_items, dim=8, num_blocks=1, max_len=max_len, key=getkey())
    ids = jax.random.randint(getkey(), (len(lengths), max_len), 0, num_items)
    padding = jnp.arange(max_len)[None, :] < max_len - jnp.asarray(lengths)[:, None]
    batch = {
        "input": jnp.where(padding, num_items, ids),
        "target": jnp.where(padding, num_items, jnp.roll(ids, -1, axis=1)),
    }

    def direct(model):
        logits = jax.vmap(model.scores)(batch["input"])
        real = batch["target"] != num_items
        terms = optax.softmax_cross_entropy_with_integer_labels(
            logits, jnp.where(real, batch["target"], 0)
        )
        return jnp.sum(jnp.where(real, terms, 0.0)) / jnp.sum(real).astype(terms.dtype)

    loss = zoo.recsys.sequence_loss("softmax")
    value, grads = jax.jit(jax.value_and_grad(lambda m: loss(m, batch)))(model)
    expected, expected_grads = jax.jit(jax.value_and_grad(direct))(model)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    assert tree_allclose(grads, expected_grads, rtol=1e-4, atol=1e-6)


def test_sasrec_dropout_keeps_each_activation_with_one_minus_the_rate_unbiased(getkey):
    from zoo.recsys._sasrec import _dropout

    x = jnp.ones((1000, 1000))
    key = getkey()
    dropped = _dropout(x, 0.2, key)
    kept = dropped != 0
    # 10^6 draws: the kept fraction is 0.8 within 5 standard deviations (0.0004 each).
    assert abs(float(jnp.mean(kept)) - 0.8) < 0.002
    np.testing.assert_allclose(dropped[kept], 65536 / (65536 - 13107))  # rate 0.2 -> 13107/2^16
    assert abs(float(jnp.mean(dropped)) - 1.0) < 0.003
    np.testing.assert_array_equal(_dropout(x, 0.2, key), dropped)  # the key decides
    assert not jnp.array_equal(_dropout(x, 0.2, getkey()), dropped)
    # An odd count of elements (half a random word left over) keeps its shape.
    assert set(np.unique(_dropout(jnp.ones(7), 0.5, key)).tolist()) <= {0.0, 2.0}
    assert _dropout(x, 0.2, None) is x
    assert _dropout(x, 0.0, key) is x
    # A rate just below 1 keeps one level in 2^16, scaled by 2^16: finite, never all dropped
    # by rounding.
    nearly_all = _dropout(x, 1 - 2**-18, key)
    assert set(np.unique(nearly_all).tolist()) <= {0.0, 65536.0}
