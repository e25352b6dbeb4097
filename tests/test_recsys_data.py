"""zoo.data for recommenders: MovieLens files of each format, synthetic data, splits."""

import jax
import numpy as np
import pytest

import zoo

# The same five ratings in each published format: raw users 7, 3, 12; raw movies 50, 9, 31.
_RATINGS = [(7, 50, 5, 881250949), (3, 9, 3, 891717742), (7, 9, 4, 878887116),
            (12, 31, 1, 880606923), (3, 50, 2, 886397596)]  # fmt: skip
_FORMATS = {
    "u.data": ("", lambda u, i, r, t: f"{u}\t{i}\t{r}\t{t}"),
    "ratings.dat": ("", lambda u, i, r, t: f"{u}::{i}::{r}::{t}"),
    "ratings.csv": ("userId,movieId,rating,timestamp\n", lambda u, i, r, t: f"{u},{i},{r}.0,{t}"),
}


def _write(folder, filename, lines):
    header, line = _FORMATS[filename]
    path = folder / filename
    path.write_text(
        header + "\n".join(line(*row) if isinstance(row, tuple) else row for row in lines) + "\n"
    )
    return path


@pytest.mark.parametrize("filename", list(_FORMATS))
def test_movielens_reads_each_format_and_keeps_the_id_mapping(tmp_path, filename):
    _write(tmp_path, filename, _RATINGS)
    data = zoo.data.movielens(tmp_path)
    assert data.user_ids.tolist() == [3, 7, 12] and data.item_ids.tolist() == [9, 31, 50]
    assert data["user"].tolist() == [1, 0, 1, 2, 0] and data["item"].tolist() == [2, 0, 0, 1, 2]
    assert data["rating"].tolist() == [5, 3, 4, 1, 2] and data["rating"].dtype == np.float32
    assert data["timestamp"].tolist() == [row[3] for row in _RATINGS]
    assert data["user"].dtype == np.int32 and (data.num_users, data.num_items) == (3, 3)
    raw = [
        (data.user_ids[u], data.item_ids[i])
        for u, i in zip(data["user"], data["item"], strict=True)
    ]
    assert raw == [row[:2] for row in _RATINGS]


@pytest.mark.parametrize(
    "filename, bad_line, line_number",
    [
        ("u.data", "7\t50\t5", 3),  # a missing field
        ("u.data", "7\tfifty\t5\t881250949", 4),
        ("ratings.dat", "7::50::5::881250949::x", 2),
        ("ratings.dat", "-7::50::5::881250949", 6),
        ("ratings.csv", "7,50,five,881250949", 3),  # the header is line 1
        ("ratings.csv", "7;50;5.0;881250949", 5),
    ],
)
def test_malformed_lines_name_the_file_and_line(tmp_path, filename, bad_line, line_number):
    lines = list(_RATINGS)
    header_lines = 1 if filename == "ratings.csv" else 0
    lines.insert(line_number - 1 - header_lines, bad_line)
    path = _write(tmp_path, filename, lines)
    with pytest.raises(ValueError, match=f"^{path}:{line_number}: expected"):
        zoo.data.movielens(tmp_path)


def test_a_wrong_csv_header_is_line_1(tmp_path):
    (tmp_path / "ratings.csv").write_text("user,item,rating,time\n1,2,3.0,4\n")
    with pytest.raises(ValueError, match=r"ratings.csv:1: expected the header"):
        zoo.data.movielens(tmp_path)


def test_missing_movielens_files_say_which_are_expected(tmp_path):
    for folder in (tmp_path / "absent", tmp_path):
        with pytest.raises(zoo.data.DatasetNotFoundError) as error:
            zoo.data.movielens(folder)
        message = str(error.value)
        assert str(folder) in message and "does not download" in message
        assert all(name in message for name in ("u.data", "ratings.dat", "ratings.csv"))
    _write(tmp_path, "u.data", _RATINGS)
    _write(tmp_path, "ratings.dat", _RATINGS)
    with pytest.raises(ValueError, match="several ratings files"):
        zoo.data.movielens(tmp_path)


def test_synthetic_interactions_are_planted_and_deterministic():
    key = jax.random.key(3)
    data = zoo.data.synthetic_interactions(50, 40, interactions_per_user=6, key=key)
    again = zoo.data.synthetic_interactions(50, 40, interactions_per_user=6, key=key)
    other = zoo.data.synthetic_interactions(50, 40, interactions_per_user=6, key=jax.random.key(4))
    assert all(np.array_equal(data[c], again[c]) for c in data)
    assert not np.array_equal(data["item"], other["item"])
    assert data["user"].tolist() == np.repeat(np.arange(50), 6).tolist()
    items, times = data["item"].reshape(50, 6), data["timestamp"].reshape(50, 6)
    assert all(len(set(row)) == 6 for row in items)  # distinct items per user
    assert (np.sort(times, axis=1) == np.arange(6)).all()
    counts = np.bincount(data["item"], minlength=40)
    assert counts.max() > 3 * counts.mean()  # popularity skew
    with pytest.raises(ValueError, match="interactions_per_user=41 exceeds num_items=40"):
        zoo.data.synthetic_interactions(5, 40, interactions_per_user=41, key=key)


def _events():
    rows = {
        "user": np.array([0, 0, 0, 1, 1, 2, 2]),
        "item": np.array([0, 1, 2, 0, 3, 1, 2]),
        "rating": np.array([5, 3, 4, 2, 5, 4, 1], np.float32),
        "timestamp": np.array([30, 10, 20, 5, 5, 1, 0]),
    }
    rows["user"], rows["item"] = rows["user"].astype(np.int32), rows["item"].astype(np.int32)
    return zoo.data.Interactions(rows, user_ids=np.array([10, 11, 12, 13]), item_ids=np.arange(4))


def test_leave_last_out_holds_out_each_users_latest_event():
    train, test = zoo.data.leave_last_out(_events())
    # User 1's two events tie at time 5: the later row goes. User 3 has no events.
    assert list(zip(test["user"], test["item"], strict=True)) == [(0, 0), (1, 3), (2, 1)]
    assert len(train["user"]) == 4 and train.num_users == 4 and train.user_ids[3] == 13
    single = _events().take(np.array([0, 3, 4]))  # user 0 has one event: kept for training
    train, test = zoo.data.leave_last_out(single)
    assert test["user"].tolist() == [1] and train["user"].tolist() == [0, 1]


def test_random_holdout_and_implicit():
    data = _events()
    train, test = zoo.data.random_holdout(data, fraction=0.3, seed=1)
    assert (len(train["user"]), len(test["user"])) == (5, 2)
    keys = set(zip(train["user"], train["item"], strict=True))
    assert keys.isdisjoint(zip(test["user"], test["item"], strict=True))
    again = zoo.data.random_holdout(data, fraction=0.3, seed=1)[1]
    assert np.array_equal(again["item"], test["item"])
    liked = zoo.data.implicit(data, threshold=4.0)
    assert liked["rating"].tolist() == [5, 4, 5, 4] and liked.num_items == 4
    with pytest.raises(ValueError, match="fraction must lie strictly between 0 and 1"):
        zoo.data.random_holdout(data, fraction=1.0)
    with pytest.raises(ValueError, match="needs a 'timestamp' column"):
        untimed = {"user": data["user"], "item": data["item"]}
        zoo.data.leave_last_out(zoo.data.Interactions(untimed, user_ids=data.user_ids,
                                                      item_ids=data.item_ids))  # fmt: skip


def test_interactions_check_their_columns():
    with pytest.raises(ValueError, match=r"Interactions\['item'\] must lie in \[0, 2\)"):
        zoo.data.Interactions(
            {"user": np.array([0]), "item": np.array([2])},
            user_ids=np.arange(1),
            item_ids=np.arange(2),
        )
    with pytest.raises(ValueError, match="needs a 'user' column"):
        zoo.data.Interactions({"item": np.array([0])}, user_ids=np.arange(1), item_ids=np.arange(1))
