"""What defines a training run, recorded in its checkpoint folder: only that run resumes there.

`zoo-run.json` beside the checkpoints holds the arguments that decide which example each step
takes and what state it updates (the data's size, `batch_size`, `last_batch`, `accumulate`,
`precision`, `loss`, `key`) and the path, dtype and shape of every array of the model and of
the optimizer state. A resumed run must give the same; a folder without the record is not a
training run, and `zoo.train` writes nothing into it.
"""

import json
import os
import pathlib

import jax
import numpy as np

from .._io import _array_store as store
from .._io._folder_lock import LOCK_NAME

RECORD_NAME = "zoo-run.json"
_FORMAT = "zoo.run/1"
_NEW_FOLDER = "Choose a new or empty folder, e.g. zoo.Checkpointing('runs/x')."


def run_record(arguments: dict, *, model, opt_state) -> dict:
    """The record of a run: the options that define what it computes (`key` and a callable
    `loss` by name, the rest as given) and the signatures of its state's arrays."""
    arguments = dict(arguments)
    loss = arguments.get("loss")
    if loss is not None and not isinstance(loss, str):
        arguments["loss"] = _name_of(loss)
    arguments["key"] = _key_data(arguments["key"])
    return {
        "format": _FORMAT,
        "arguments": arguments,
        "model": _signature(model),
        "optimizer": _signature(opt_state),
    }


def describe_data(examples: int | None, batches: int | None) -> str:
    if examples is not None:
        return f"{examples} examples"
    return "an iterable" if batches is None else f"an iterable of {batches} batches"


def _name_of(function) -> str:
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', '?')}"


def _key_data(key) -> list[int]:
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key).ravel().tolist()


def _signature(tree) -> list[list[str]]:
    return [
        [leaf.path, store.describe(leaf.value.dtype, leaf.value.shape)]
        for leaf in store.leaves(tree)
    ]


def check_run_folder(directory: str | os.PathLike, record: dict, resume: bool) -> bool:
    """Checks that `directory` may hold the run of `record`, reading only; whether it already
    holds this run's record (which then stays as it is).

    A missing or empty folder takes a new run. A folder with a run takes it again with
    `resume=True` when the records match, and takes a new run only when it holds no
    checkpoint yet. Anything else is refused with a `ValueError` naming the
    `zoo.Checkpointing` directory.
    """
    path = pathlib.Path(directory)
    entries = sorted(entry.name for entry in path.iterdir()) if path.is_dir() else []
    entries = [name for name in entries if name != LOCK_NAME]
    if not entries:
        return False
    recorded = _read(path)
    if recorded is None:
        listed = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise ValueError(
            f"Checkpointing directory {path} is not a zoo training run: it holds {listed} and no "
            f"{RECORD_NAME}, and zoo.train writes its checkpoints only into a new, empty or run "
            f"folder (a zoo.save folder is not one). {_NEW_FOLDER}"
        )
    if resume:
        _check_same_run(recorded, record, path)
        return True
    steps = [name for name in entries if name.split(".")[0].isdigit()]
    if steps:
        raise ValueError(
            f"Checkpointing directory {path} already holds a training run "
            f"(checkpoints {', '.join(steps)}): pass resume=True to continue it, or choose "
            "another folder for a new run, e.g. zoo.Checkpointing('runs/y')."
        )
    return False


def write_record(directory: str | os.PathLike, record: dict) -> None:
    """Writes the record whole or not at all (a temporary file renamed into place)."""
    path = pathlib.Path(directory) / RECORD_NAME
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(record, indent=1))
    os.replace(temporary, path)


def _read(path: pathlib.Path) -> dict | None:
    try:
        recorded = json.loads((path / RECORD_NAME).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise ValueError(
            f"Checkpointing directory {path}: its run record {RECORD_NAME} cannot be read "
            f"({error})."
        ) from None
    if not isinstance(recorded, dict) or recorded.get("format") != _FORMAT:
        raise ValueError(
            f"Checkpointing directory {path}: {RECORD_NAME} is not a run record this zoo writes "
            f"(format {_FORMAT}). {_NEW_FOLDER}"
        )
    return recorded


def _check_same_run(recorded: dict, given: dict, path: pathlib.Path) -> None:
    where = f"the run in Checkpointing directory {path}"
    given_arguments, recorded_arguments = given["arguments"], recorded["arguments"]
    for name in [*given_arguments, *(n for n in recorded_arguments if n not in given_arguments)]:
        value, before = given_arguments.get(name), recorded_arguments.get(name)
        if before != value:
            raise ValueError(
                f"resume=True with {name}={value!r}, but {where} was started with "
                f"{name}={before!r} (recorded {before!r}, given {value!r}): a resumed run must be "
                f"the run it continues. Resume with {name}={before!r}, or start a new run in "
                "another Checkpointing directory."
            )
    _check_same_arrays(
        "a model that does not match the model", recorded["model"], given["model"], where
    )
    _check_same_arrays(
        "an optimizer whose state does not match the optimizer state",
        recorded["optimizer"],
        given["optimizer"],
        where,
    )


def _check_same_arrays(what: str, recorded: list, given: list, where: str) -> None:
    before, now = dict(map(tuple, recorded)), dict(map(tuple, given))
    for leaf_path in [*now, *before]:
        if before.get(leaf_path) != now.get(leaf_path):
            raise ValueError(
                f"resume=True with {what} at {leaf_path} of {where}: recorded "
                f"{before.get(leaf_path, 'no array')}, given {now.get(leaf_path, 'no array')}. "
                "Resume with the model and optimizer the run was started with."
            )
