"""The 8x8 UCI digits, shipped inside the package so that zoo always has a dataset offline."""

import functools
import gzip
import importlib.resources
import io

import numpy as np
from jaxtyping import Float32, Int, Integer, UInt8

from .. import _checks
from ._dataset import check_split, labelled_dataset

_SPLITS = ("train", "test", "all")
_NUM_PIXELS = 64
_MAX_PIXEL = 16  # each pixel counts set bits in a 4x4 block of the original 32x32 bitmap


@functools.cache
def _load_table() -> UInt8[np.ndarray, "1797 65"]:
    """Reads the bundled CSV once: 64 pixel columns, then the label."""
    # importlib.resources finds the file wherever the package is installed (wheel, zip, editable).
    resource = importlib.resources.files(__package__) / "_files" / "digits.csv.gz"
    text = gzip.decompress(resource.read_bytes()).decode("ascii")
    table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.uint8)
    table.flags.writeable = False  # cached and shared between calls: nobody may mutate it
    return table


def _stratified_split(
    labels: Integer[np.ndarray, " n"], *, test_fraction: float, seed: int
) -> tuple[Int[np.ndarray, " n_train"], Int[np.ndarray, " n_test"]]:
    """Sorted train and test indices; each class sends the same fraction of its rows to test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        num_test = round(test_fraction * len(members))
        test.append(members[:num_test])
        train.append(members[num_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _scale_pixels(counts: UInt8[np.ndarray, "n 64"]) -> Float32[np.ndarray, "n 64"]:
    return counts.astype(np.float32) / np.float32(_MAX_PIXEL)


def digits(
    split: str = "train", *, test_fraction: float = 0.25, seed: int = 0
) -> dict[str, np.ndarray]:
    """The UCI handwritten digits: 1797 grey-scale images of 8x8 pixels, classes 0 to 9.

    The data ships inside zoo (57 KB, CC BY 4.0, E. Alpaydin and C. Kaynak), so this works
    offline. The file has no official train/test split; this function makes one that is
    stratified (each class sends the same fraction of its images to the test split) and
    deterministic: the same `seed` and `test_fraction` always give the same split, and the two
    splits are disjoint and together cover all 1797 images.

    **Arguments:**

    - `split`: `"train"`, `"test"` or `"all"` (every image, in file order).
    - `test_fraction`: the fraction of each class that goes to the test split, in (0, 1).
    - `seed`: seeds the NumPy generator that draws the split.

    **Returns:**

    A dataset dict of NumPy arrays: `"x"`, float32 of shape `(n, 64)` with pixels scaled
    to [0, 1] (row-major 8x8), and `"y"`, int32 labels of shape `(n,)`. With the defaults the
    train split has 1347 images and the test split 450.

    **Raises:**

    `ValueError` if `split` or `test_fraction` is invalid.

    **Example:**

    ```python
    import zoo

    train = zoo.data.digits("train")
    test = zoo.data.digits("test")
    train["x"].shape  # (1347, 64)
    images = test["x"].reshape(-1, 8, 8)
    ```
    """
    check_split(split, _SPLITS)
    example = "zoo.data.digits('train', test_fraction=0.25, seed=0)"
    _checks.integer("seed", seed, minimum=0, example=example)
    if _checks.is_real(test_fraction) and not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1; got {test_fraction!r}")
    _checks.probability("test_fraction", test_fraction, example=example)
    table = _load_table()
    labels = table[:, _NUM_PIXELS]
    if split == "all":
        rows = np.arange(len(table))
    else:
        train_rows, test_rows = _stratified_split(labels, test_fraction=test_fraction, seed=seed)
        rows = train_rows if split == "train" else test_rows
    return labelled_dataset(_scale_pixels(table[rows, :_NUM_PIXELS]), labels[rows].astype(np.int32))
