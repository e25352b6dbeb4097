"""MNIST from its four standard IDX files, found on disk or downloaded and verified once."""

import os
import pathlib
from collections.abc import Sequence

import numpy as np
from jaxtyping import Float32, UInt8

from .. import _checks
from ._dataset import check_split, labelled_dataset
from ._download import AllMirrorsFailedError, DatasetNotFoundError, download_from_mirrors
from ._idx import read_idx

_SPLITS = ("train", "test")
#: (images, labels) file names of each split.
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
#: md5 of each .gz file as originally published; a download is kept only if it matches.
_MD5S = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
#: Base URLs tried in order; each serves the four files under their standard names.
_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
_IMAGES_MAGIC = 0x00000803  # uint8, 3 dimensions: (n, rows, columns)
_LABELS_MAGIC = 0x00000801  # uint8, 1 dimension: (n,)
_IMAGE_SHAPE = (28, 28)
_NUM_CLASSES = 10
_TIMEOUT_SECONDS = 60.0  # per connection attempt and per read, not for the whole file
_DATA_DIR_VARIABLE = "ZOO_DATA_DIR"
_MIRROR_VARIABLE = "ZOO_MNIST_MIRROR"


def mnist(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    flatten: bool = True,
    mirror: str | None = None,
) -> dict[str, np.ndarray]:
    """The MNIST handwritten digits: 28x28 grey-scale images, classes 0 to 9.

    Reads the four standard gzip-compressed IDX files (`train-images-idx3-ubyte.gz`,
    `train-labels-idx1-ubyte.gz`, `t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`)
    from the first of these folders that applies:

    1. `root`, if given;
    2. `$ZOO_DATA_DIR/mnist`, if the environment variable `ZOO_DATA_DIR` is set;
    3. `~/.cache/zoo/mnist`.

    A file that is missing is downloaded there (if `download=True`) from the first mirror that
    delivers it with the published md5. Each download goes to a temporary file in the same
    folder and is renamed into place only once verified, so an interrupted or corrupted
    download never leaves a file behind.

    **Arguments:**

    - `split`: `"train"` (60000 images) or `"test"` (10000 images).
    - `root`: the folder that holds (or is to hold) the four files.
    - `download`: whether to download missing files. With `False` nothing touches the network.
    - `flatten`: return images as rows of 784 pixels rather than as 28x28 arrays.
    - `mirror`: a base URL to download from instead of the built-in mirrors, for example a
        local copy; the environment variable `ZOO_MNIST_MIRROR` does the same.

    **Returns:**

    A dataset dict of NumPy arrays: `"x"`, float32 pixels scaled to [0, 1], of shape
    `(n, 784)`, or `(n, 28, 28)` with `flatten=False`; and `"y"`, int32 labels of shape `(n,)`.

    **Raises:**

    - `DatasetNotFoundError` if a file is missing and cannot be downloaded (or `download=False`);
        the message lists the missing files, the folder and how to point zoo elsewhere.
    - `ValueError` for an unknown `split`, or for a file that is not a well-formed MNIST IDX
        file (the message names the file and what was expected).

    **Example:**

    ```{.python notest}
    # needs the MNIST files (or the network)
    import zoo

    train = zoo.data.mnist("train")  # downloads to ~/.cache/zoo/mnist on first use
    test = zoo.data.mnist("test", root="/data/mnist", download=False)
    train["x"].shape, train["y"].shape  # (60000, 784), (60000,)
    ```
    """
    check_split(split, _SPLITS)
    folder = _resolve_folder(root)
    _checks.boolean("download", download, example="zoo.data.mnist('train', download=False)")
    images_name, labels_name = _FILES[split]
    _ensure_files(folder, split, download=download, mirrors=_resolve_mirrors(mirror))
    images = read_idx(folder / images_name, magic=_IMAGES_MAGIC, item_shape=_IMAGE_SHAPE)
    labels = read_idx(folder / labels_name, magic=_LABELS_MAGIC, item_shape=())
    _check_labels(
        images, labels, images_path=folder / images_name, labels_path=folder / labels_name
    )
    x = _scale_pixels(images)
    if flatten:
        x = x.reshape(len(x), -1)
    return labelled_dataset(x, labels.astype(np.int32))


def _resolve_folder(root: str | os.PathLike[str] | None) -> pathlib.Path:
    if root is not None:
        example = "zoo.data.mnist('train', root='~/data/mnist')"
        return _checks.path("root", root, example=example).expanduser()
    if data_dir := os.environ.get(_DATA_DIR_VARIABLE):
        return pathlib.Path(data_dir).expanduser() / "mnist"
    return pathlib.Path.home() / ".cache" / "zoo" / "mnist"


def _resolve_mirrors(mirror: str | None) -> tuple[str, ...]:
    # An override replaces the built-in mirrors rather than preceding them, so that a test or an
    # air-gapped site pointing at its own server never falls back to the internet.
    if mirror is not None:
        return (mirror,)
    if mirror := os.environ.get(_MIRROR_VARIABLE):
        return (mirror,)
    return _MIRRORS


def _missing_files(folder: pathlib.Path, split: str) -> list[str]:
    return [name for name in _FILES[split] if not (folder / name).is_file()]


def _ensure_files(
    folder: pathlib.Path, split: str, *, download: bool, mirrors: Sequence[str]
) -> None:
    """Downloads the split's missing files, or raises `DatasetNotFoundError` saying what to do."""
    if not _missing_files(folder, split):
        return
    if not download:
        raise _not_found(folder, split, "download=False, so nothing was downloaded.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _not_found(folder, split, f"Could not create the folder: {error}") from error
    for name in _missing_files(folder, split):
        try:
            download_from_mirrors(
                name, folder, mirrors=mirrors, md5=_MD5S[name], timeout=_TIMEOUT_SECONDS
            )
        except AllMirrorsFailedError as error:
            failures = "\n".join(f"  {failure}" for failure in error.failures)
            reason = f"Downloading {name} failed from every mirror:\n{failures}"
            raise _not_found(folder, split, reason) from error


def _not_found(folder: pathlib.Path, split: str, reason: str) -> DatasetNotFoundError:
    missing = "\n".join(f"  {name}" for name in _missing_files(folder, split))
    all_files = ", ".join(_MD5S)
    return DatasetNotFoundError(
        f"MNIST {split!r} split: these files are missing from {folder}:\n{missing}\n"
        f"{reason}\n"
        f"To fix this, put the MNIST files ({all_files}) in {folder}, or pass root= a folder "
        f"that holds them, or set the environment variable {_DATA_DIR_VARIABLE} to a folder "
        "whose mnist/ subfolder holds them."
    )


def _check_labels(
    images: UInt8[np.ndarray, "n_images 28 28"],
    labels: UInt8[np.ndarray, " n_labels"],
    *,
    images_path: pathlib.Path,
    labels_path: pathlib.Path,
) -> None:
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
            "labels; expected one label per image"
        )
    if len(labels) and labels.max() >= _NUM_CLASSES:
        raise ValueError(
            f"{labels_path}: expected labels 0 to {_NUM_CLASSES - 1}, found {labels.max()}"
        )


def _scale_pixels(images: UInt8[np.ndarray, "n 28 28"]) -> Float32[np.ndarray, "n 28 28"]:
    pixels = images.astype(np.float32)
    pixels /= 255  # in place: the training set is 188 MB as float32
    return pixels
