"""MovieLens ratings from a local folder, in any of the three published file formats.

zoo never downloads MovieLens: GroupLens's licence does not allow redistributing it, so the
user downloads and unpacks it and points `movielens` at the folder.
"""

import io
import os
import pathlib
import re
from typing import NamedTuple

import numpy as np

from .. import _checks
from ._download import DatasetNotFoundError
from ._interactions import Interactions
from ._loading import from_columns

_FIELDS = ("user", "item", "rating", "timestamp")
# Ids and timestamps are parsed as integers, never through a float: a float64 holds integers
# exactly only up to 2**53, so larger ids would merge (and 1e20 would become INT64_MIN).
_ROW = np.dtype(
    [("user", np.int64), ("item", np.int64), ("rating", np.float64), ("timestamp", np.int64)]
)
_INT64_MAX = np.iinfo(np.int64).max
_DECIMAL = re.compile(r"\s*[+-]?[0-9]+\s*")


class _Format(NamedTuple):
    filename: str
    release: str
    separator: str
    header: str | None  # the first line, when the format has one

    @property
    def separator_name(self) -> str:
        return {"\t": "tab", "::": "'::'", ",": "comma"}[self.separator]

    def describe(self) -> str:
        header = f", after the header line {self.header!r}" if self.header else ""
        return (
            f"{self.filename} ({self.release}: {self.separator_name}-separated "
            f"user, item, rating, timestamp{header})"
        )


_FORMATS = (
    _Format("u.data", "ml-100k", "\t", None),
    _Format("ratings.dat", "ml-1m and ml-10m", "::", None),
    _Format(
        "ratings.csv",
        "ml-latest, ml-latest-small, ml-20m, ml-25m",
        ",",
        "userId,movieId,rating,timestamp",
    ),
)


def movielens(root: str | os.PathLike[str]) -> Interactions:
    """MovieLens ratings read from a local folder, with users and movies as contiguous indices.

    The folder must hold the ratings file of one MovieLens release, in its published format
    (the format is detected from the file name):

    - `u.data` (ml-100k): tab-separated `user item rating timestamp`;
    - `ratings.dat` (ml-1m, ml-10m): `user::item::rating::timestamp`;
    - `ratings.csv` (ml-latest, ml-latest-small, ml-20m, ml-25m): comma-separated, after the
        header `userId,movieId,rating,timestamp`.

    zoo does not download MovieLens: the GroupLens licence does not allow redistributing it.
    Download a release from GroupLens (grouplens.org/datasets/movielens), unzip it, and pass
    the folder.

    **Arguments:**

    - `root`: the folder holding the ratings file (e.g. the unzipped `ml-100k/`).

    **Returns:**

    An [`Interactions`][zoo.data.Interactions] in file order: `"user"` and `"item"` (int32
    indices; raw ids are numbered in increasing order), `"rating"` (float32) and `"timestamp"`
    (int64, seconds since 1970). `user_ids` and `item_ids` hold the raw MovieLens ids.

    **Raises:**

    - `DatasetNotFoundError` if the folder is missing or holds none of the files, saying which
        files are expected.
    - `ValueError` for a malformed line, naming the file and the line number.

    **Example:**

    ```{.python notest}
    # needs the MovieLens files
    ratings = zoo.data.movielens("~/data/ml-1m")
    liked = zoo.data.implicit(ratings, threshold=4.0)
    train, test = zoo.data.leave_last_out(liked)
    ```
    """
    folder = _checks.path("root", root, example="zoo.data.movielens('~/data/ml-1m')").expanduser()
    path, fmt = _find_ratings_file(folder)
    columns = _read(path, fmt)
    return from_columns(
        columns["user"],
        columns["item"],
        timestamp=columns["timestamp"],
        rating=columns["rating"],
    )


def _find_ratings_file(folder: pathlib.Path) -> tuple[pathlib.Path, _Format]:
    found = [(folder / fmt.filename, fmt) for fmt in _FORMATS if (folder / fmt.filename).is_file()]
    if not found:
        problem = "holds no ratings file" if folder.is_dir() else "does not exist"
        expected = "\n".join(f"  {fmt.describe()}" for fmt in _FORMATS)
        raise DatasetNotFoundError(
            f"MovieLens folder {folder} {problem}. It should hold one of:\n{expected}\n"
            "zoo does not download MovieLens (its licence does not allow redistribution): "
            "download a release from GroupLens (grouplens.org/datasets/movielens), unzip it, "
            "and pass root= the unzipped folder."
        )
    if len(found) > 1:
        names = ", ".join(path.name for path, _ in found)
        raise ValueError(
            f"MovieLens folder {folder} holds several ratings files ({names}); keep one release "
            "per folder so that it is clear which to read."
        )
    return found[0]


def _read(path: pathlib.Path, fmt: _Format) -> dict[str, np.ndarray]:
    """The four columns of `path`: NumPy's fast reader, or a line-by-line one that explains."""
    text = path.read_text(encoding="latin-1")  # any byte decodes; bad fields fail below
    if not text.split("\n", 1 if fmt.header is not None else 0)[-1].strip():
        raise ValueError(f"{path}: the file holds no ratings")
    try:
        return _read_fast(text, fmt)
    except ValueError:
        # The line-by-line reader finds the offending line and raises with its number.
        return _read_lines(path, text, fmt)


def _read_fast(text: str, fmt: _Format) -> dict[str, np.ndarray]:
    body = text.split("\n", 1)[1] if fmt.header is not None and "\n" in text else text
    if fmt.header is not None:
        _check_header(text, fmt)
    # NumPy's reader takes one-character separators: '::' becomes a tab first.
    body = body.replace(fmt.separator, "\t")
    table = np.loadtxt(io.StringIO(body), delimiter="\t", dtype=_ROW, comments=None, ndmin=1)
    if not np.isfinite(table["rating"]).all():
        raise ValueError("a rating is not finite")
    if any((table[name] < 0).any() for name in ("user", "item", "timestamp")):
        raise ValueError("ids or timestamps are negative")
    return _columns(table["user"], table["item"], table["rating"], table["timestamp"])


def _check_header(text: str, fmt: _Format) -> None:
    first = text.split("\n", 1)[0].strip()
    if first != fmt.header:
        raise ValueError(f"the header is {first!r}, not {fmt.header!r}")


def _read_lines(path: pathlib.Path, text: str, fmt: _Format) -> dict[str, np.ndarray]:
    lines = text.split("\n")
    start = 0
    if fmt.header is not None:
        start = 1
        if lines[0].strip() != fmt.header:
            raise ValueError(
                f"{path}:1: expected the header {fmt.header!r}; got {lines[0].strip()!r}"
            )
    rows = [
        _parse_line(path, number, line, fmt)
        for number, line in enumerate(lines[start:], start=start + 1)
        if line.strip()
    ]
    return _columns(*(np.array(column) for column in zip(*rows, strict=True)))


def _parse_line(path: pathlib.Path, number: int, line: str, fmt: _Format) -> tuple:
    fields = line.strip("\r").split(fmt.separator)
    if len(fields) != len(_FIELDS):
        raise ValueError(
            f"{path}:{number}: expected 4 {fmt.separator_name}-separated fields "
            f"(user, item, rating, timestamp); got {len(fields)} in {line!r}"
        )
    try:
        user, item, timestamp = (_integer(fields[i]) for i in (0, 1, 3))
        rating = float(fields[2])
    except ValueError:
        raise ValueError(
            f"{path}:{number}: expected integer user, item and timestamp and a numeric rating; "
            f"got {line!r}"
        ) from None
    if max(user, item, timestamp) > _INT64_MAX:
        raise ValueError(
            f"{path}:{number}: user, item and timestamp must fit int64, at most {_INT64_MAX}; "
            f"got {line!r}"
        )
    if min(user, item, timestamp) < 0 or not np.isfinite(rating):
        raise ValueError(
            f"{path}:{number}: expected non-negative ids and timestamp and a finite rating; "
            f"got {line!r}"
        )
    return user, item, rating, timestamp


def _integer(field: str) -> int:
    """A decimal integer, exactly (Python's `int` would also take `1_000`)."""
    if not _DECIMAL.fullmatch(field):
        raise ValueError(field)
    return int(field)


def _columns(user, item, rating, timestamp) -> dict[str, np.ndarray]:
    return {
        "user": np.asarray(user, np.int64),
        "item": np.asarray(item, np.int64),
        "rating": np.asarray(rating, np.float64),
        "timestamp": np.asarray(timestamp, np.int64),
    }
