"""Tests for `zoo.data`: the bundled digits."""

import importlib.resources

import numpy as np
import pytest

import zoo

# ----------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_dtypes_and_ranges():
    sizes = {}
    for split in ("train", "test", "all"):
        data = zoo.data.digits(split)
        assert set(data) == {"x", "y"}
        assert isinstance(data["x"], np.ndarray) and isinstance(data["y"], np.ndarray)
        assert data["x"].dtype == np.float32 and data["y"].dtype == np.int32
        assert data["x"].shape == (len(data["y"]), 64)
        assert data["x"].min() == 0 and data["x"].max() == 1
        assert set(np.unique(data["y"])) == set(range(10))
        sizes[split] = len(data["y"])
    assert sizes["all"] == 1797
    assert sizes["train"] + sizes["test"] == 1797
    assert sizes["test"] == pytest.approx(0.25 * 1797, abs=10)


def test_digits_split_is_deterministic():
    first, second = zoo.data.digits("test", seed=3), zoo.data.digits("test", seed=3)
    np.testing.assert_array_equal(first["x"], second["x"])
    np.testing.assert_array_equal(first["y"], second["y"])
    other = zoo.data.digits("test", seed=4)
    assert not np.array_equal(first["x"], other["x"])


def _rows(data):
    """Each example as one row (pixels, label), rows sorted, so datasets compare as multisets."""
    rows = np.concatenate([data["x"], data["y"][:, None].astype(np.float32)], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


def test_digits_train_and_test_partition_all():
    train, test = zoo.data.digits("train", seed=7), zoo.data.digits("test", seed=7)
    both = {key: np.concatenate([train[key], test[key]]) for key in ("x", "y")}
    np.testing.assert_array_equal(_rows(both), _rows(zoo.data.digits("all")))


def test_digits_split_indices_are_disjoint_and_stratified():
    from zoo.data._digits import _load_table, _stratified_split

    labels = _load_table()[:, 64]
    train, test = _stratified_split(labels, test_fraction=0.3, seed=0)
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
    test_share = np.bincount(labels[test], minlength=10) / np.bincount(labels, minlength=10)
    np.testing.assert_allclose(test_share, 0.3, atol=0.01)


def test_digits_ships_inside_the_package():
    resource = importlib.resources.files("zoo.data") / "_files" / "digits.csv.gz"
    assert resource.is_file()


def test_digits_rejects_bad_arguments():
    with pytest.raises(ValueError, match="split must be one of 'train', 'test', 'all'; got 'val'"):
        zoo.data.digits("val")
    with pytest.raises(ValueError, match="test_fraction"):
        zoo.data.digits("train", test_fraction=1.0)
