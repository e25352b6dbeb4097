"""Real data end to end: loading by column name, cleaning with counts, three-way splits, the
evaluation protocol (repeats, drops), recommend() for every recommender, the ML-100K stand-in."""

import jax
import numpy as np
import pytest

import zoo


def _csv(tmp_path, text, name="events.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_interactions_maps_raw_ids_by_column_name(tmp_path):
    path = _csv(tmp_path, "when,who,what,stars\n"
                          "2024-05-01T00:00:10,ann,tea,4\n"
                          "2024-05-01T00:00:00,bob,tea,2\n"
                          "2024-05-01T00:00:20,ann,jam,5\n")  # fmt: skip
    data = zoo.data.read_interactions(path, user="who", item="what", time="when", rating="stars")
    assert list(data.user_ids) == ["ann", "bob"] and list(data.item_ids) == ["jam", "tea"]
    assert data["user"].tolist() == [0, 1, 0] and data["item"].tolist() == [1, 1, 0]
    assert data["timestamp"][2] - data["timestamp"][1] == 20
    assert data["rating"].dtype == np.float32 and data["rating"].tolist() == [4, 2, 5]
    tsv = _csv(tmp_path, "u\ti\tt\n9\t70\t3\n2\t70\t1\n", name="events.tsv")
    data = zoo.data.read_interactions(tsv, user="u", item="i", time="t")
    assert data.user_ids.tolist() == [2, 9] and data.user_ids.dtype == np.int64
    with pytest.raises(ValueError, match=r"item='movie' names no column .* \['u', 'i', 't'\]"):
        zoo.data.read_interactions(tsv, user="u", item="movie", time="t")
    bad = _csv(tmp_path, "user,item,timestamp\n1,2,3\n1,2\n", name="bad.csv")
    with pytest.raises(ValueError, match=r"bad.csv:3: expected 3 fields"):
        zoo.data.read_interactions(bad)


def test_read_interactions_takes_a_dataframe_where_pandas_is_installed():
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame({"u": ["x", "y", "x"], "i": [5, 6, 6], "t": [1, 2, 3]})
    data = zoo.data.read_interactions(frame, user="u", item="i", time="t")
    assert data["user"].tolist() == [0, 1, 0] and data.item_ids.tolist() == [5, 6]


def _repeats():
    # User 1 watches item 7 three times (t = 5, 1, 9); user 2 has one event.
    return zoo.data.from_columns(
        np.array([1, 1, 1, 1, 2]),
        np.array([7, 8, 7, 7, 7]),
        timestamp=np.array([5, 6, 1, 9, 4]),
        rating=np.array([5, 2, 4, 3, 5]),
    )


@pytest.mark.parametrize("keep, times", [("first", [6, 1, 4]), ("last", [6, 9, 4])])
def test_dedupe_keeps_the_first_or_last_event_of_a_pair_and_counts(keep, times):
    kept, removed = zoo.data.dedupe(_repeats(), keep=keep)
    assert kept["timestamp"].tolist() == times
    assert removed == zoo.data.Removed(events=2, users=0, items=0)
    everything, none = zoo.data.dedupe(_repeats(), keep="all")
    assert len(everything["user"]) == 5 and none.events == 0
    with pytest.raises(ValueError, match="keep must be one of"):
        zoo.data.dedupe(_repeats(), keep="none")


def test_rating_threshold_and_k_core_count_what_they_remove():
    liked, removed = zoo.data.rating_threshold(_repeats(), 4)
    assert liked["rating"].tolist() == [5, 4, 5] and removed == (2, 0, 1)
    # A chain: dropping item 3 (one event) takes user 1 below 2 events, which takes item 1
    # below 2, and so on; the 2-core is users 0 and 2 with items 0 and 2.
    users = np.array([0, 0, 2, 2, 1, 1, 0])
    items = np.array([0, 2, 0, 2, 1, 3, 1])
    core, removed = zoo.data.k_core(zoo.data.from_columns(users, items), users=2, items=2)
    assert sorted(zip(core["user"].tolist(), core["item"].tolist(), strict=True)) == [
        (0, 0),
        (0, 2),
        (2, 0),
        (2, 2),
    ]
    assert removed == (3, 1, 2) and core.num_items == 4
    compact = zoo.data.compact(core)
    assert compact.num_items == 2 and compact.item_ids.tolist() == [0, 2]
    assert compact.user_ids.tolist() == [0, 2]
    with pytest.raises(ValueError, match="users=9, items=2 remove every event"):
        zoo.data.k_core(core, users=9, items=2)


def test_leave_one_out_holds_out_the_last_two_events_of_each_user():
    data = zoo.data.from_columns(
        np.array([1, 1, 1, 1, 2, 2, 3, 3, 3]),
        np.array([5, 6, 7, 5, 5, 6, 7, 8, 9]),
        timestamp=np.array([1, 2, 3, 4, 1, 2, 3, 3, 3]),
    )
    train, valid, test = zoo.data.leave_one_out(data)

    def pairs(split):
        raw = split.user_ids[split["user"]], split.item_ids[split["item"]]
        return list(zip(raw[0].tolist(), raw[1].tolist(), strict=True))

    assert pairs(test) == [(1, 5), (3, 9)]  # a repeat is a legal target; ties: the last row
    assert pairs(valid) == [(1, 7), (3, 8)]
    assert pairs(train) == [(1, 5), (1, 6), (2, 5), (2, 6), (3, 7)]  # user 2: too few to split


def test_temporal_split_cuts_all_events_at_one_time():
    data = zoo.data.synthetic_movielens(key=jax.random.key(0))
    assert (data.num_users, data.num_items) == (943, 1682)
    assert 90_000 <= len(data["user"]) <= 110_000
    lengths = np.bincount(data["user"])
    assert lengths.min() >= 20 and 500 <= lengths.max() <= 700
    train, valid, test = zoo.data.temporal_split(data, valid=0.1, test=0.2)
    assert train["timestamp"].max() <= valid["timestamp"].min()
    assert valid["timestamp"].max() <= test["timestamp"].min()
    assert len(test["user"]) == round(0.2 * len(data["user"]))
    with pytest.raises(ValueError, match="valid \\+ test must leave events to train on"):
        zoo.data.temporal_split(data, valid=0.5, test=0.5)


def _mf(data):
    return zoo.MatrixFactorization(data.num_users, data.num_items, dim=4, key=jax.random.key(1))


def test_a_repeated_held_out_item_stays_a_candidate_and_counts_once():
    # User 0 had items 0..5 and watches item 0 again; item 0 is scored highest for everyone.
    train = zoo.data.from_columns(np.zeros(6, int), np.arange(6), timestamp=np.arange(6))
    train = zoo.data.Interactions(dict(train), user_ids=np.arange(1), item_ids=np.arange(30))
    twice = {"user": np.zeros(2, np.int32), "item": np.zeros(2, np.int32)}
    scores = zoo.recsys.Popularity(train, 30)
    report = zoo.recsys.evaluate_ranking(scores, train, twice, k=10, baselines=False)
    assert report["model"]["hr@10"] == 1.0 and report["model"]["mrr"] == 1.0
    assert report.users == 1 and "held-out items kept as candidates" in report.protocol
    sampled = zoo.recsys.evaluate_sampled(scores, train, twice, num_negatives=5, baselines=False)
    assert sampled.users == 1 and "5 uniform negatives" in sampled.protocol


def test_users_that_cannot_be_ranked_are_dropped_and_counted():
    # User 0 has seen 25 of 30 items: 4 candidates besides the held-out one, fewer than 10.
    # User 1 has no training events. User 2 is evaluated.
    users = np.r_[np.zeros(25, int), np.full(3, 2)]
    items = np.r_[np.arange(25), [0, 1, 2]]
    train = zoo.data.Interactions(
        {"user": users.astype(np.int32), "item": items.astype(np.int32)},
        user_ids=np.arange(3), item_ids=np.arange(30),
    )  # fmt: skip
    test = {"user": np.array([0, 1, 2], np.int32), "item": np.array([29, 5, 6], np.int32)}
    model = _mf(train)
    report = zoo.recsys.evaluate_ranking(model, train, test, k=10)
    assert report.users == 1
    assert report.dropped == {"not in train": 1, "nothing to rank against": 1}
    assert report["random"]["hr@10"] < 1.0
    assert "1 not in train, 1 nothing to rank against: dropped" in zoo.recsys.format_report(report)
    with pytest.raises(ValueError, match="test leaves no user to evaluate"):
        zoo.recsys.evaluate_ranking(model, train, test, k=27)


def test_popularity_negatives_are_harder_for_the_popularity_baseline():
    data = zoo.data.synthetic_interactions(300, 200, key=jax.random.key(0))
    train, test = zoo.data.leave_last_out(data)
    model = _mf(train)
    uniform = zoo.recsys.evaluate_sampled(model, train, test, num_negatives=50)
    popular = zoo.recsys.evaluate_sampled(model, train, test, num_negatives=50,
                                          negatives="popularity")  # fmt: skip
    assert popular["popularity"]["hr@10"] < uniform["popularity"]["hr@10"]
    assert "popularity negatives" in zoo.recsys.format_report(popular)


def _models(data):
    key = jax.random.key(3)
    counts = zoo.recsys.item_counts(data, data.num_items)
    return {
        "mf": _mf(data),
        "two-tower": zoo.TwoTower(data.num_users, data.num_items, dim=4, key=key),
        "dlrm": zoo.recsys.DLRMRecommender(data.num_users, data.num_items, counts, dim=4, key=key),
        "sasrec": zoo.SASRec(data.num_items, dim=8, max_len=6, key=key),
    }


@pytest.mark.parametrize("name", ["mf", "two-tower", "dlrm", "sasrec"])
def test_recommend_gives_unseen_items_in_raw_ids_and_refuses_unknown_users(name):
    data = zoo.data.synthetic_sequences(40, 30, length=8, key=jax.random.key(0))
    data = zoo.data.Interactions(dict(data), user_ids=np.arange(40) * 10 + 5,
                                 item_ids=np.arange(30) + 1000)  # fmt: skip
    data, cold = data.take(data["user"] != 3), 35  # user 3 (raw id 35) has no events
    model = _models(data)[name]
    top = zoo.recsys.recommend(model, data, users=[5, 15], k=5)
    assert top.items.shape == top.scores.shape == (2, 5)
    assert (np.diff(top.scores, axis=1) <= 0).all()
    for row, user in enumerate([0, 1]):
        seen = set(data.item_ids[data["item"][data["user"] == user]].tolist())
        assert seen.isdisjoint(top.items[row].tolist()) and top.items[row].min() >= 1000
    everything = zoo.recsys.recommend(model, data, users=5, k=5, exclude_seen=False)
    assert everything.scores[0, 0] >= top.scores[0, 0] - 1e-5  # seen items may score higher
    with pytest.raises(ValueError, match="users must have events in interactions: user 35"):
        zoo.recsys.recommend(model, data, users=[5, cold], k=5)
    with pytest.raises(ValueError, match="users must be raw ids"):
        zoo.recsys.recommend(model, data, users=[6], k=5)
    with pytest.raises(ValueError, match="k must be at most the items left"):
        zoo.recsys.recommend(model, data, users=[5], k=25)


def test_a_sasrec_sized_otherwise_than_the_data_is_refused():
    data = zoo.data.synthetic_sequences(20, 30, length=6, key=jax.random.key(0))
    train, test = zoo.data.leave_last_out(data)
    padded = zoo.SASRec(num_items=31, dim=8, max_len=6, key=jax.random.key(1))  # off by one
    with pytest.raises(ValueError, match=r"model\.num_items must be the data's catalogue size"):
        zoo.recsys.evaluate_ranking(padded, train, test)
    with pytest.raises(ValueError, match=r"model\.num_items must be the data's catalogue size"):
        zoo.recsys.recommend(padded, train, users=[0])


def test_the_cli_sizes_sasrec_by_the_data_and_no_padding_id_is_a_target():
    from zoo._cli import _recipes as recipes

    data = zoo.data.synthetic_sequences(20, 30, length=8, key=jax.random.key(0))
    train, _, _ = zoo.data.leave_one_out(data.take(data["item"] < 25))  # 5 items never seen
    model = recipes.build_model("sasrec", train, 8, jax.random.key(1), max_len=6)
    assert model.num_items == train.num_items == 30
    rows = recipes.training_data("sasrec", train, max_len=6, batch_size=4)
    real = rows["target"] != model.num_items  # the padding id is num_items, outside the items
    assert real.any() and (rows["target"][real] < train.num_items).all()
