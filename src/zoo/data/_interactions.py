"""`Interactions`: user-item events as a dataset dict, with the raw ids behind the indices."""

from collections.abc import Mapping

import numpy as np
from jaxtyping import Shaped

from .. import _checks

_EXAMPLE = (
    'zoo.data.Interactions({"user": users, "item": items}, user_ids=raw_users, item_ids=raw_items)'
)


class Interactions(dict):
    """User-item interactions: a dict of equal-length NumPy arrays, one row per event.

    Always `"user"` and `"item"` (int32 indices in `[0, num_users)` and `[0, num_items)`),
    and, where the source has them, `"rating"` (float32) and `"timestamp"` (int64). Being a
    dict of arrays, it goes straight into [`zoo.train`][] as `data`.

    The attributes `user_ids` and `item_ids` map indices back to the source's raw ids
    (`user_ids[u]` is the raw id of user `u`); splits and filters keep them, so every part of
    a dataset shares one id space.

    **Example:**

    ```{.python notest}
    # needs the MovieLens files
    ratings = zoo.data.movielens("~/data/ml-100k")
    ratings["user"][:3], ratings.num_users  # indices, and 943 users
    ratings.item_ids[ratings["item"][0]]  # the raw MovieLens id of the first rated movie
    ```
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        *,
        user_ids: Shaped[np.ndarray, " num_users"],
        item_ids: Shaped[np.ndarray, " num_items"],
    ):
        """**Arguments:**

        - `arrays`: the columns: `"user"` and `"item"` indices, and any other per-event arrays
            of the same length.
        - `user_ids`: the raw id of each user index (integers or strings).
        - `item_ids`: the raw id of each item index (integers or strings).
        """
        if not isinstance(arrays, Mapping):
            raise TypeError(
                f"arrays must be a mapping of columns such as {{'user': ..., 'item': ...}}; got "
                f"{type(arrays).__name__}. For example {_EXAMPLE}"
            )
        super().__init__({name: np.asarray(value) for name, value in arrays.items()})
        self.user_ids = np.asarray(user_ids)
        self.item_ids = np.asarray(item_ids)
        _check_columns(self)

    @property
    def num_users(self) -> int:
        """The number of users of the id space (some may have no rows here)."""
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        """The number of items of the id space (some may have no rows here)."""
        return len(self.item_ids)

    def take(self, rows: np.ndarray) -> "Interactions":
        """The events at `rows` (indices or a boolean mask), in the same id space."""
        return Interactions(
            {name: column[rows] for name, column in self.items()},
            user_ids=self.user_ids,
            item_ids=self.item_ids,
        )

    def __repr__(self) -> str:
        columns = ", ".join(f"{name}: {column.dtype}" for name, column in self.items())
        return (
            f"Interactions({len(self['user'])} events, {self.num_users} users, "
            f"{self.num_items} items; {columns})"
        )


def _check_columns(data: Interactions) -> None:
    for name in ("user", "item"):
        if name not in data:
            raise ValueError(f"Interactions needs a {name!r} column; for example {_EXAMPLE}.")
    for name, column in data.items():
        _checks.numeric_array(f"Interactions[{name!r}]", column, example=_EXAMPLE)
    lengths = {name: len(column) for name, column in data.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"Interactions columns must have equal lengths; got {lengths}.")
    for name, size in (("user", data.num_users), ("item", data.num_items)):
        column = data[name]
        if not np.issubdtype(column.dtype, np.integer):
            raise TypeError(
                f"Interactions[{name!r}] must hold integer indices; got {column.dtype}."
            )
        _checks.fits_int32(f"Interactions[{name!r}]", column, example=_EXAMPLE)
        if column.size and (column.min() < 0 or column.max() >= size):
            raise ValueError(
                f"Interactions[{name!r}] must lie in [0, {size}) (len({name}_ids)); got "
                f"{column.min()} to {column.max()}."
            )
