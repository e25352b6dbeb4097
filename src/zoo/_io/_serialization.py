"""`zoo.save` and `zoo.load`: a model's arrays through Orbax, and how to rebuild it as JSON.

A save is a directory:

```
models/mnist-mlp/
    zoo.json              # format, versions, the model's class and constructor arguments,
                          # and a manifest: path, dtype, shape and XXH3 checksum of every array
    arrays-<token>/       # the arrays, an Orbax checkpoint
```

`zoo.json` is written last, to a temporary file that is renamed over the old one, and it names
the arrays directory it belongs to: a save that fails or is killed leaves the previous
`zoo.json` and its arrays as they were, and never a `zoo.json` that names incomplete arrays.
"""

import json
import os
import pathlib
import re
import secrets
import shutil
from importlib import metadata as _package_metadata
from typing import Any

import equinox as eqx
import jax

from .. import _checks
from .._custom_types import PyTree
from .._version import __version__
from . import _array_store as store
from ._rebuild import name_of, rebuild_skeleton, recipe_of

_FORMAT = "zoo.save/1"
_METADATA = "zoo.json"
_ARRAYS = re.compile(r"arrays-[0-9a-f]{16}")
# What an interrupted save can leave in its directory besides a complete save.
_LEFTOVER = re.compile(r"(arrays-[0-9a-f]{16}(\.orbax-checkpoint-tmp.*)?|zoo\.json\.tmp-.*)")


def save(path: str | os.PathLike, model: PyTree, *, overwrite: bool = False) -> pathlib.Path:
    """Saves `model`'s arrays, and how to rebuild it, to the directory `path`.

    The arrays are written through Orbax; `path/zoo.json` records the model's class, its
    constructor arguments (for zoo models, so that `zoo.load(path)` needs no template), the
    zoo, JAX and Orbax versions, and the dtype, shape and XXH3 checksum of every array.

    The save is atomic: until it has completed, `path` holds the previous save (or nothing that
    `zoo.load` accepts), even if the process is killed midway. Two processes must not save to
    the same `path` at once.

    **Arguments:**

    - `path`: a directory, created if needed. It must not exist, be empty, or hold a save.
    - `model`: any `equinox.Module` or pytree of arrays (a zoo model, a `zoo.TrainState`, ...).
      Its arrays are stored, and so are its scalar leaves (a Python `int`, `float`, `bool` or
      `str`, a NumPy scalar), which come back exactly, of the same type. The rest (the
      structure, static fields, other leaves such as functions) comes back from the model's
      constructor or from `like=` when loading.
    - `overwrite`: replace a save already at `path` (the old one stays intact until the new one
      is complete). Without it, saving over a save raises `FileExistsError`.

    **Returns:**

    `path`, as a `pathlib.Path`.

    **Example:**

    ```python
    model = zoo.MLP(in_size=784, out_size=10, hidden=(256, 128), key=jax.random.key(0))
    zoo.save("models/mnist-mlp", model)
    model = zoo.load("models/mnist-mlp")  # rebuilt from the recorded arguments
    ```
    """
    path = _checked_path(path, "zoo.save('models/mlp', model)")
    _checks.boolean("overwrite", overwrite, example="zoo.save(path, model, overwrite=True)")
    _check_model(model)
    item, manifest = store.to_store(model, argument="model")
    _prepare_directory(path, overwrite)
    arrays = f"arrays-{secrets.token_hex(8)}"
    with store.orbax().Checkpointer(store.array_handler()) as checkpointer:
        checkpointer.save((path / arrays).absolute(), args=store.save_args(item))
    info = {
        "format": _FORMAT,
        "versions": _versions(),
        "model": _model_info(model, manifest),
        "arrays": arrays,
        "manifest": manifest,
        "scalars": store.scalar_leaves(model),
    }
    _write_json_atomically(path / _METADATA, info)
    _remove_leftovers(path, keep=arrays)
    return path


def load(path: str | os.PathLike, like: PyTree | None = None) -> PyTree:
    """Loads a model saved by [`zoo.save`][].

    Before any array is read, the saved arrays' paths, dtypes and shapes are checked against
    the model (`like`, or the zoo model rebuilt from its recorded constructor arguments); after
    reading, each array is checked against its XXH3-64 checksum. Any difference raises an error
    naming the first array that differs: a load never returns a silently wrong model.

    **Arguments:**

    - `path`: the directory given to `zoo.save`.
    - `like`: a model of the same structure to load into: a real instance, or the shapes from
      `eqx.filter_eval_shape(Model, ..., key=jax.random.key(0))` (no memory for the weights).
      Its static fields and non-array leaves are kept; its arrays are replaced, keeping each
      leaf's kind (JAX array, NumPy array or typed PRNG key). Needed for models that are not
      zoo models, and for zoo models built with something other than names and numbers
      (e.g. an activation passed as a function). `None` rebuilds a zoo model by itself.

    **Returns:**

    The model, with the saved arrays, bit for bit.

    **Raises:**

    - `FileNotFoundError` when `path` holds no save.
    - `ValueError` when the save does not match `like` (another class, structure, dtype or
      shape), or is damaged (unreadable `zoo.json`, truncated or corrupted array files).
    - `TypeError` when `like` is needed and not given.

    **Example:**

    ```{.python notest}
    # a fragment: MyModel and key are yours
    mlp = zoo.load("models/mnist-mlp")
    model = zoo.load("models/my-model", like=eqx.filter_eval_shape(MyModel, 64, key=key))
    ```
    """
    path = _checked_path(path, "zoo.load('models/mlp')")
    where = f"the checkpoint at {path}"
    info = _read_info(path)
    skeleton = _skeleton(info["model"], like, where)

    def read(item, restore_args):
        return (
            store.orbax()
            .Checkpointer(store.array_handler())
            .restore(
                (path / info["arrays"]).absolute(),
                args=store.restore_args(item, restore_args),
            )
        )

    model = store.from_store(skeleton, info["manifest"], read, where)
    return store.with_scalars(model, info.get("scalars", []), where)


def _checked_path(path, example: str) -> pathlib.Path:
    if isinstance(path, eqx.Module):
        raise TypeError(
            f"path must be a path (a str or pathlib.Path); got a {type(path).__name__}: the "
            f"path comes first. For example: {example}"
        )
    return _checks.path("path", path, example=example)


def _check_model(model: PyTree) -> None:
    """A model with no array to store is a mistake (`None`, a path passed as the model), and a
    `jax.Ref` in it would be left out of the checkpoint."""
    _checks.no_refs(model, "zoo.save", "a ref would be left out of the checkpoint.")
    if not store.leaves(model):
        raise TypeError(
            f"model must be an equinox.Module or pytree holding arrays; got "
            f"{_checks.describe(model)}, which holds none. For example: "
            "zoo.save('models/mlp', model)"
        )


def _versions() -> dict[str, str]:
    return {
        "zoo": __version__,
        "jax": jax.__version__,
        "orbax-checkpoint": _package_metadata.version("orbax-checkpoint"),
    }


def _model_info(model: PyTree, manifest: list[dict]) -> dict[str, Any]:
    """The model's class and, when it can be rebuilt, its constructor arguments; else why not."""
    info: dict[str, Any] = {"class": name_of(type(model)), "arguments": None}
    recipe = recipe_of(model)
    if recipe is None:
        info["not_rebuildable"] = (
            f"{info['class']} does not record its constructor arguments (only zoo models do)"
        )
    elif recipe.arguments is None:
        info["not_rebuildable"] = recipe.problem
    else:
        problem = _rebuild_problem(recipe.name, recipe.arguments, manifest)
        if problem is None:
            info["arguments"] = json.loads(recipe.arguments)
        else:
            info["not_rebuildable"] = problem
    return info


def _rebuild_problem(name: str, arguments: str, manifest: list[dict]) -> str | None:
    """Why the recorded arguments do not rebuild the model's arrays (it was changed since its
    construction, by `eqx.tree_at` say), or `None` when they do."""
    try:
        skeleton = rebuild_skeleton(name, arguments)
    except (TypeError, ValueError) as error:  # e.g. an argument that JSON turned into a tuple
        return f"its recorded constructor arguments do not rebuild it: {error}"
    try:
        store.check_match(manifest, store.leaves(skeleton), "its constructor arguments")
    except ValueError as mismatch:
        return f"the model was changed after construction: {mismatch}"
    return None


def _prepare_directory(path: pathlib.Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"path {path} exists and is not a directory.")
    if (path / _METADATA).exists() and not overwrite:
        raise FileExistsError(
            f"{path} already holds a save; pass overwrite=True to replace it (the old save "
            "stays intact until the new one is complete)."
        )
    if path.is_dir():
        ours = lambda name: name == _METADATA or _LEFTOVER.fullmatch(name)  # noqa: E731
        strangers = sorted(p.name for p in path.iterdir() if not ours(p.name))
        if strangers:
            raise FileExistsError(
                f"{path} is not empty and does not hold a zoo save (it has {strangers[:3]}); "
                "choose a new or empty directory."
            )
    path.mkdir(parents=True, exist_ok=True)


def _write_json_atomically(target: pathlib.Path, content: dict) -> None:
    """Writes `target` through a synced temporary file renamed over it: readers see the old file
    or the whole new one, even after a crash."""
    temporary = target.with_name(f"{target.name}.tmp-{secrets.token_hex(8)}")
    with open(temporary, "w") as file:
        json.dump(content, file, indent=1)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def _remove_leftovers(path: pathlib.Path, keep: str) -> None:
    """Removes the previous save's arrays and whatever interrupted saves left behind."""
    for entry in path.iterdir():
        if entry.name != keep and _LEFTOVER.fullmatch(entry.name):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _read_info(path: pathlib.Path) -> dict:
    file = path / _METADATA
    if not file.is_file():
        raise FileNotFoundError(f"no zoo save at {path}: {_why_missing(path)}")
    try:
        info = json.loads(file.read_text())
        _check_info(info)
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{file} is damaged or not a zoo save: {error!r}") from error
    return info


def _check_info(info: dict) -> None:
    if info["format"] != _FORMAT:
        raise ValueError(f"unknown format {info['format']!r}, expected {_FORMAT!r}")
    if not _ARRAYS.fullmatch(info["arrays"]):  # a bare name: never a path out of the save
        raise ValueError(f"malformed arrays directory {info['arrays']!r}")
    if not isinstance(info["manifest"], list) or not isinstance(info["model"]["class"], str):
        raise ValueError("malformed manifest or model")
    if not isinstance(info.get("scalars", []), list):
        raise ValueError("malformed scalars")


def _why_missing(path: pathlib.Path) -> str:
    if not path.exists():
        return "the directory does not exist."
    if not path.is_dir():
        return "it is a file, not a directory."
    if any(p.name.isdigit() for p in path.iterdir() if p.is_dir()):
        return (
            f"it has no {_METADATA}, and looks like a training checkpoint directory: "
            "restore it with zoo.Checkpoints(path).restore(like)."
        )
    return f"it has no {_METADATA} (an interrupted save leaves none)."


def _skeleton(model_info: dict, like: PyTree | None, where: str) -> PyTree:
    """What to load into: `like`, checked to be of the saved class, or the rebuilt zoo model."""
    saved_class = model_info["class"]
    if like is not None:
        store.check_class(saved_class, like, where)
        return like
    if model_info.get("arguments") is None:
        raise TypeError(
            f"{where} holds a {saved_class} that cannot be rebuilt by itself: "
            f"{model_info.get('not_rebuildable')}. Pass a model of the same structure: "
            "zoo.load(path, like=model), where model can be "
            "eqx.filter_eval_shape(Model, ..., key=jax.random.key(0))."
        )
    try:
        return rebuild_skeleton(saved_class, json.dumps(model_info["arguments"]))
    except LookupError:
        raise TypeError(
            f"{where} holds a {saved_class}, which no imported module defines: import it "
            "first, or pass like=model."
        ) from None
    except (TypeError, ValueError) as error:  # e.g. arguments this version no longer takes
        raise TypeError(
            f"{where} holds a {saved_class} that this version of its class cannot rebuild from "
            f"the recorded arguments ({error}); pass like=model."
        ) from error
