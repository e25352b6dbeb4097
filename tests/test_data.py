"""Tests for `zoo.data`: the bundled digits, the MNIST IDX reader and the verified downloader.

Every download goes to a throwaway HTTP server on 127.0.0.1; the autouse fixture below removes
the built-in mirrors so that a test that forgets to name a mirror fails instead of going online.
"""

import gzip
import hashlib
import http.server
import importlib.resources
import os
import pathlib
import re
import socket
import struct
import threading

import numpy as np
import pytest

import zoo
from zoo.data import DatasetNotFoundError, _mnist

TRAIN_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No built-in mirrors, no proxies, and no real `~/.cache` or `$ZOO_DATA_DIR`."""
    monkeypatch.setattr(_mnist, "_MIRRORS", ())
    monkeypatch.delenv("ZOO_MNIST_MIRROR", raising=False)
    monkeypatch.delenv("ZOO_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for variable in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
        monkeypatch.delenv(variable.upper(), raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


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


# ----------------------------------------------------------------------------------------------
# MNIST on the real files


def test_mnist_real_files(shared_data):
    folder = shared_data / "mnist"
    for split, size in (("train", 60000), ("test", 10000)):
        data = zoo.data.mnist(split, root=folder, download=False)
        assert data["x"].shape == (size, 784) and data["y"].shape == (size,)
        assert data["x"].dtype == np.float32 and data["y"].dtype == np.int32
        assert data["x"].min() == 0 and data["x"].max() == 1
        counts = np.bincount(data["y"], minlength=10)
        assert len(counts) == 10
        # Every digit is between 0.8x and 1.2x its share in a balanced set.
        assert np.all(counts > 0.08 * size) and np.all(counts < 0.12 * size)
    images = zoo.data.mnist("test", root=str(folder), download=False, flatten=False)["x"]
    assert images.shape == (10000, 28, 28)
    np.testing.assert_array_equal(images.reshape(10000, 784), data["x"])


# ----------------------------------------------------------------------------------------------
# MNIST on tiny files made here


def idx_gz(magic, dims, payload):
    """A gzip-compressed IDX file: big-endian magic and dimensions, then the payload."""
    return gzip.compress(struct.pack(f">I{len(dims)}I", magic, *dims) + payload, mtime=0)


def tiny_mnist(num_images=5):
    """The four MNIST files, `num_images` random images each, plus their pixels and labels."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(num_images, 28, 28), dtype=np.uint8)
    labels = (np.arange(num_images) % 10).astype(np.uint8)
    image_file = idx_gz(IMAGES_MAGIC, images.shape, images.tobytes())
    label_file = idx_gz(LABELS_MAGIC, labels.shape, labels.tobytes())
    files = {TRAIN_FILES[0]: image_file, TRAIN_FILES[1]: label_file}
    files |= {TEST_FILES[0]: image_file, TEST_FILES[1]: label_file}
    return files, images, labels


def write_files(folder, files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)


def test_mnist_reads_idx_files(tmp_path):
    files, images, labels = tiny_mnist()
    write_files(tmp_path, files)
    data = zoo.data.mnist("train", root=tmp_path, download=False)
    np.testing.assert_array_equal(data["x"], images.reshape(5, 784).astype(np.float32) / 255)
    np.testing.assert_array_equal(data["y"], labels)
    assert data["x"].dtype == np.float32 and data["y"].dtype == np.int32


def test_mnist_rejects_bad_split(tmp_path):
    with pytest.raises(ValueError, match="split must be one of 'train', 'test'; got 'val'"):
        zoo.data.mnist("val", root=tmp_path)


def _pixels(num_images):
    return bytes(num_images * 28 * 28)


MALFORMED_IMAGES = {
    "labels magic": (idx_gz(LABELS_MAGIC, (5,), bytes(5)), "expected IDX magic 0x00000803"),
    "truncated pixels": (idx_gz(IMAGES_MAGIC, (5, 28, 28), _pixels(4)), "3920 bytes"),
    "truncated header": (gzip.compress(struct.pack(">II", IMAGES_MAGIC, 5)), "truncated IDX"),
    "empty": (gzip.compress(b""), "only 0 bytes"),
    "wrong image size": (idx_gz(IMAGES_MAGIC, (5, 27, 28), _pixels(5)), r"shape \(28, 28\)"),
    "truncated gzip": (idx_gz(IMAGES_MAGIC, (5, 28, 28), _pixels(5))[:-10], "gzip"),
    "not gzip": (b"not a gzip file", "gzip"),
}


@pytest.mark.parametrize("case", MALFORMED_IMAGES)
def test_mnist_malformed_idx_raises_value_error_naming_the_file(tmp_path, case):
    files, _, _ = tiny_mnist()
    content, expected = MALFORMED_IMAGES[case]
    files[TRAIN_FILES[0]] = content
    write_files(tmp_path, files)
    with pytest.raises(ValueError, match=expected) as info:
        zoo.data.mnist("train", root=tmp_path, download=False)
    assert str(tmp_path / TRAIN_FILES[0]) in str(info.value)


def test_mnist_images_and_labels_must_match(tmp_path):
    files, _, _ = tiny_mnist()
    files[TRAIN_FILES[1]] = idx_gz(LABELS_MAGIC, (4,), bytes(4))
    write_files(tmp_path, files)
    with pytest.raises(ValueError, match=r"5 images but .* 4 labels"):
        zoo.data.mnist("train", root=tmp_path, download=False)
    files[TRAIN_FILES[1]] = idx_gz(LABELS_MAGIC, (5,), bytes([0, 1, 2, 3, 10]))
    write_files(tmp_path, files)
    with pytest.raises(ValueError, match="labels 0 to 9, found 10"):
        zoo.data.mnist("train", root=tmp_path, download=False)


# ----------------------------------------------------------------------------------------------
# Downloads from a local server


class _MirrorHandler(http.server.BaseHTTPRequestHandler):
    """Serves `server.files` under `/mnist/`; `server.mode` can corrupt or truncate them."""

    def do_GET(self):
        self.server.requests.append(self.path)
        name = self.path.removeprefix("/mnist/")
        body = self.server.files.get(name)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.mode == "corrupted":
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        elif self.server.mode == "truncated":
            body = body[: len(body) // 2]  # then the connection closes: a broken download
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass  # keep test output quiet


@pytest.fixture
def mirror():
    """A local HTTP mirror; tests set `.files` and `.mode`, and read `.url` and `.requests`."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MirrorHandler)
    server.files, server.mode, server.requests = {}, "ok", []
    server.url = f"http://127.0.0.1:{server.server_address[1]}/mnist/"
    # A short poll interval makes shutdown prompt (the default costs 0.5 s per test).
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def closed_url():
    """A URL on 127.0.0.1 where nothing listens, so connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


@pytest.fixture
def tiny_md5s(monkeypatch):
    """Serves the tiny files' md5s in place of the real ones; returns the tiny files."""
    files, _, _ = tiny_mnist()
    for name, content in files.items():
        monkeypatch.setitem(_mnist._MD5S, name, hashlib.md5(content).hexdigest())
    return files


def test_download_fetches_verifies_and_then_reuses(tmp_path, mirror, tiny_md5s):
    mirror.files = tiny_md5s
    folder = tmp_path / "new" / "mnist"
    data = zoo.data.mnist("train", root=folder, mirror=mirror.url)
    assert data["x"].shape == (5, 784)
    assert sorted(os.listdir(folder)) == sorted(TRAIN_FILES)  # no temporary file left over
    for name in TRAIN_FILES:
        assert (folder / name).read_bytes() == tiny_md5s[name]
        assert (folder / name).stat().st_mode & 0o777 == 0o644  # readable in a shared folder
    assert len(mirror.requests) == 2
    zoo.data.mnist("train", root=folder, mirror=mirror.url)
    assert len(mirror.requests) == 2  # files on disk are not downloaded again


def test_download_fetches_only_missing_files(tmp_path, mirror, tiny_md5s):
    mirror.files = tiny_md5s
    write_files(tmp_path, {TEST_FILES[0]: tiny_md5s[TEST_FILES[0]]})
    zoo.data.mnist("test", root=tmp_path, mirror=mirror.url)
    assert mirror.requests == [f"/mnist/{TEST_FILES[1]}"]


def test_download_honours_environment_variables(tmp_path, monkeypatch, mirror, tiny_md5s):
    mirror.files = tiny_md5s
    monkeypatch.setenv("ZOO_MNIST_MIRROR", mirror.url)
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "data"))
    zoo.data.mnist("test")
    assert sorted(os.listdir(tmp_path / "data" / "mnist")) == sorted(TEST_FILES)


def test_download_falls_back_to_the_next_mirror(
    tmp_path, monkeypatch, mirror, closed_url, tiny_md5s
):
    mirror.files = tiny_md5s
    monkeypatch.setattr(_mnist, "_MIRRORS", (closed_url, mirror.url))
    data = zoo.data.mnist("test", root=tmp_path)
    assert data["y"].shape == (5,)


@pytest.mark.parametrize("mode", ["corrupted", "truncated"])
def test_bad_download_leaves_nothing_behind(tmp_path, mirror, tiny_md5s, mode):
    mirror.files, mirror.mode = tiny_md5s, mode
    with pytest.raises(DatasetNotFoundError, match=re.escape(mirror.url)) as info:
        zoo.data.mnist("train", root=tmp_path, mirror=mirror.url)
    if mode == "corrupted":
        assert "md5" in str(info.value)
    assert os.listdir(tmp_path) == []  # neither the file nor its temporary copy


def _assert_says_where_files_go(error, folder, files):
    message = str(error)
    assert str(folder) in message
    for name in files:
        assert name in message
    assert "root=" in message and "ZOO_DATA_DIR" in message


def test_unreachable_mirror_says_where_to_put_the_files(tmp_path, closed_url):
    with pytest.raises(DatasetNotFoundError, match="failed from every mirror") as info:
        zoo.data.mnist("train", root=tmp_path, mirror=closed_url)
    assert isinstance(info.value, RuntimeError)
    _assert_says_where_files_go(info.value, tmp_path, TRAIN_FILES)
    assert closed_url in str(info.value)
    assert os.listdir(tmp_path) == []


def test_download_false_never_touches_the_network(tmp_path, mirror, tiny_md5s):
    mirror.files = tiny_md5s
    with pytest.raises(DatasetNotFoundError, match="download=False") as info:
        zoo.data.mnist("test", root=tmp_path, download=False, mirror=mirror.url)
    _assert_says_where_files_go(info.value, tmp_path, TEST_FILES)
    assert mirror.requests == []


def test_default_folder_is_the_user_cache(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        zoo.data.mnist("train", download=False)
    _assert_says_where_files_go(info.value, tmp_path / "home" / ".cache" / "zoo" / "mnist", ())
    assert not (tmp_path / "home").exists()  # download=False creates no folder either


def test_no_mirror_configured_is_a_clear_error(tmp_path):
    # The autouse fixture empties the built-in mirror list.
    with pytest.raises(DatasetNotFoundError, match="no mirror was configured"):
        zoo.data.mnist("train", root=pathlib.Path(tmp_path))
