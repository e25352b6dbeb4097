"""Interactions from a table: a CSV/TSV file or a pandas DataFrame, with named columns.

Every loader (the MovieLens one too) ends in `from_columns`: raw ids become contiguous indices
and the mapping stays on the result.
"""

import csv
import pathlib

import numpy as np

from .. import _checks
from ._interactions import Interactions

_EXAMPLE = (
    'zoo.data.read_interactions("ratings.csv", user="userId", item="movieId", '
    'time="timestamp", rating="rating")'
)


def from_columns(
    users: np.ndarray,
    items: np.ndarray,
    *,
    timestamp: np.ndarray | None = None,
    rating: np.ndarray | None = None,
) -> Interactions:
    """[`Interactions`][zoo.data.Interactions] from raw columns, one entry per event.

    Raw user and item ids (integers or strings) become contiguous indices, numbered in the
    raw ids' sorted order; `user_ids` and `item_ids` on the result map them back.

    **Arguments:**

    - `users`, `items`: the raw ids of each event's user and item.
    - `timestamp`: each event's time as integers (seconds, or any increasing count); optional.
    - `rating`: each event's rating; optional.

    **Returns:**

    The events in the given order: `"user"`, `"item"` (int32), and `"timestamp"` (int64) and
    `"rating"` (float32) where given.

    **Example:**

    ```python
    data = zoo.data.from_columns(np.array(["ann", "bob", "ann"]), np.array([10, 10, 42]))
    assert list(data.user_ids) == ["ann", "bob"] and data["user"].tolist() == [0, 1, 0]
    ```
    """
    users, items = np.asarray(users), np.asarray(items)
    for name, column in (("users", users), ("items", items)):
        if column.ndim != 1 or len(column) != len(users):
            raise ValueError(
                f"{name} must be a 1-d column of raw ids, as long as users ({len(users)}); got "
                f"shape {column.shape}. Example: zoo.data.from_columns(users, items)"
            )
    user_ids, user_index = np.unique(users, return_inverse=True)
    item_ids, item_index = np.unique(items, return_inverse=True)
    arrays = {"user": user_index.astype(np.int32), "item": item_index.astype(np.int32)}
    if rating is not None:
        arrays["rating"] = _numbers("rating", rating, len(users)).astype(np.float32)
    if timestamp is not None:
        arrays["timestamp"] = _times(np.asarray(timestamp), len(users))
    return Interactions(arrays, user_ids=user_ids, item_ids=item_ids)


def read_interactions(
    source,
    *,
    user: str = "user",
    item: str = "item",
    time: str | None = "timestamp",
    rating: str | None = None,
    sep: str | None = None,
) -> Interactions:
    """Reads events from a CSV or TSV file, or a pandas DataFrame, by column name.

    A file's first line names its columns; the separator is a tab for `.tsv` files and a comma
    otherwise, unless `sep` says. Raw ids may be integers or any strings; they become
    contiguous indices and `user_ids` / `item_ids` keep the raw ones. Times are integers
    (seconds) or ISO dates (`2024-05-01T12:00:00`, read as seconds since 1970). pandas is not a
    dependency of zoo: a DataFrame is read only where pandas is installed.

    **Arguments:**

    - `source`: a path to a CSV or TSV file, or a `pandas.DataFrame`.
    - `user`, `item`: the names of the columns of raw user and item ids.
    - `time`: the name of the time column (needed by time-ordered splits and SASRec), or
        `None`.
    - `rating`: the name of a rating column, or `None`.
    - `sep`: the field separator of a file; default by its extension.

    **Returns:**

    An [`Interactions`][zoo.data.Interactions] in the file's (or frame's) row order.

    **Raises:**

    `ValueError` naming the argument when a named column is missing (listing those there
    are), and naming the file and line for a malformed row.

    **Example:**

    ```python
    import pathlib, tempfile
    path = pathlib.Path(tempfile.mkdtemp()) / "events.csv"
    path.write_text("who,what,when\\nann,tea,1700000000\\nbob,tea,1700000100\\nann,jam,1700000200\\n")
    data = zoo.data.read_interactions(path, user="who", item="what", time="when")
    assert data.num_users == 2 and list(data.item_ids) == ["jam", "tea"]
    ```
    """
    names = {"user": user, "item": item, "time": time, "rating": rating}
    wanted = {argument: name for argument, name in names.items() if name is not None}
    if _is_dataframe(source):
        columns = _frame_columns(source, wanted)
    else:
        path = _checks.path("source", source, example=_EXAMPLE).expanduser()
        columns = _file_columns(path, wanted, sep)
    return from_columns(
        _ids(columns["user"]),
        _ids(columns["item"]),
        timestamp=columns.get("time"),
        rating=columns.get("rating"),
    )


def _is_dataframe(source) -> bool:
    return type(source).__name__ == "DataFrame" and hasattr(source, "columns")


def _missing(kind: str, wanted: dict, present) -> None:
    for argument, name in wanted.items():
        if name not in present:
            raise ValueError(
                f"{argument}={name!r} names no column of the {kind}; its columns are "
                f"{list(present)}. For example: {_EXAMPLE}"
            )


def _frame_columns(frame, wanted: dict) -> dict[str, np.ndarray]:
    _missing("DataFrame", wanted, list(frame.columns))
    return {argument: frame[name].to_numpy() for argument, name in wanted.items()}


def _file_columns(path: pathlib.Path, wanted: dict, sep: str | None) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"source {path} is not a file. For example: {_EXAMPLE}")
    sep = sep or ("\t" if path.suffix.lower() == ".tsv" else ",")
    with open(path, newline="", encoding="utf-8") as file:
        rows = csv.reader(file, delimiter=sep)
        header = [name.strip() for name in next(rows, [])]
        _missing(f"file {path} (header {sep.join(header)!r})", wanted, header)
        places = {argument: header.index(name) for argument, name in wanted.items()}
        values = {argument: [] for argument in wanted}
        for number, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(
                    f"{path}:{number}: expected {len(header)} fields like the header; got "
                    f"{len(row)} in {sep.join(row)!r}"
                )
            for argument, place in places.items():
                values[argument].append(row[place].strip())
    if not values["user"]:
        raise ValueError(f"{path}: the file holds a header and no events")
    return {argument: np.array(column) for argument, column in values.items()}


def _ids(column: np.ndarray) -> np.ndarray:
    """Raw ids as int64 where every one is a decimal integer, else as strings."""
    if column.dtype.kind in "iu":
        return column.astype(np.int64)
    if column.dtype.kind in "US" and all(_is_integer(text) for text in column):
        return column.astype(np.int64)
    if column.dtype.kind == "f":
        if not np.isfinite(column).all() or (column != np.round(column)).any():
            raise ValueError("ids must be integers or strings; got fractional or missing ids")
        return column.astype(np.int64)
    return column.astype(str)


def _is_integer(text: str) -> bool:
    return text.lstrip("-").isdigit() and len(text) < 19


def _numbers(name: str, column, count: int) -> np.ndarray:
    column = np.asarray(column)
    try:
        values = column.astype(np.float64)
    except ValueError:
        raise ValueError(f"{name} must be numbers; got values such as {column[:3]}") from None
    if len(values) != count or not np.isfinite(values).all():
        raise ValueError(f"{name} must be {count} finite numbers, one per event")
    return values


def _times(column: np.ndarray, count: int) -> np.ndarray:
    """Times as int64 seconds: integers as they are, ISO dates converted."""
    if column.dtype.kind in "US" and not all(_is_integer(text) for text in column):
        try:
            column = column.astype("datetime64[s]")
        except ValueError:
            raise ValueError(
                f"time must be integer seconds or ISO dates; got values such as {column[:3]}"
            ) from None
    if column.dtype.kind == "M":
        return column.astype("datetime64[s]").astype(np.int64)
    return _numbers("time", column, count).astype(np.int64)
