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
from ._rebuild import name_of, rebuild_difference, rebuild_skeleton, recipe_of

_FORMAT = "zoo.save/2"
# Format 1 recorded scalar leaves by type name and value, and arguments in plain JSON; it loads.
_FORMATS = ("zoo.save/1", _FORMAT)
_METADATA = "zoo.json"
_ARRAYS = re.compile(r"arrays-[0-9a-f]{16}")
# What an interrupted save can leave in its directory besides a complete save.
_LEFTOVER = re.compile(r"(arrays-[0-9a-f]{16}(\.orbax-checkpoint-tmp.*)?|zoo\.json\.tmp-.*)")


def save(path: str | os.PathLike, model: PyTree, *, overwrite: bool = False) -> pathlib.Path:
    """Saves `model`'s arrays, and how to rebuild it, to the directory `path`.

    The arrays are written through Orbax; `path/zoo.json` records the model's class, the
    arguments it was built with (for a `zoo.Rebuildable`, every zoo model among them, so that
    `zoo.load(path)` needs no template), the zoo, JAX and Orbax versions, and the dtype, shape
    and XXH3 checksum of every array.

    Before anything is written, a `zoo.Rebuildable` model is rebuilt from its recorded
    arguments (as shapes only) and compared with itself, static fields included; see
    [`zoo.Rebuildable`][] for what is refused.

    The save is atomic: until it has completed, `path` holds the previous save (or nothing that
    `zoo.load` accepts), even if the process is killed midway. Two processes must not save to
    the same `path` at once.

    **Arguments:**

    - `path`: a directory, created if needed. It must not exist, be empty, or hold a save.
    - `model`: any `equinox.Module` or pytree of arrays (a zoo model, a `zoo.TrainState`, ...).
      Its arrays are stored, and so are its scalar leaves (Python numbers, strings and bytes,
      NumPy scalars of every fixed-size dtype), which come back exactly, of the same type and
      bits. The rest (the structure, static fields, other leaves such as functions) comes
      back from the model's constructor or from `like=` when loading.
    - `overwrite`: replace a save already at `path` (the old one stays intact until the new one
      is complete). Without it, saving over a save raises `FileExistsError`.

    **Returns:**

    `path`, as a `pathlib.Path`.

    **Raises:**

    - `ValueError` when the model is a `zoo.Rebuildable` that its recorded arguments do not
      rebuild (changed after it was built, say), naming the first field that differs.
    - `TypeError` when a leaf cannot come back exactly (a `Decimal`, an `IntEnum` member, an
      array of Python objects), naming its path.
    - `FileExistsError` when `path` holds something else, or a save and `overwrite=False`.

    Nothing is written when any of these is raised.

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
    # Everything that can refuse the model comes first: a refused save writes nothing.
    scalars = store.scalar_leaves(model, argument="model")
    item, manifest = store.to_store(model, argument="model")
    model_info = _model_info(model)
    arrays = f"arrays-{secrets.token_hex(8)}"
    info = {
        "format": _FORMAT,
        "versions": _versions(),
        "model": model_info,
        "arrays": arrays,
        "manifest": manifest,
        "scalars": scalars,
        "leaves": store.leaf_paths(model),
    }
    text = json.dumps(info, indent=1, allow_nan=False)
    _prepare_directory(path, overwrite)
    with store.orbax().Checkpointer(store.array_handler()) as checkpointer:
        checkpointer.save((path / arrays).absolute(), args=store.save_args(item))
    _write_json_atomically(path / _METADATA, text)
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
      Its static fields and other leaves (functions, say) are kept; its arrays are replaced,
      keeping each leaf's kind (JAX array, NumPy array or typed PRNG key), and its scalar
      leaves by the saved ones, of the saved type. Needed for models that are not
      `zoo.Rebuildable`, and for those built with an argument a save cannot record (e.g. an
      activation function of your own). `None` rebuilds the model from its recorded
      arguments.

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
    skeleton = _skeleton(info, like, where)
    # Before the arrays: eqx.filter_eval_shape makes a NumPy scalar a 0-d shape, as an array.
    skeleton = store.with_scalars(skeleton, info.get("scalars", []), where)

    def read(item, restore_args):
        return (
            store.orbax()
            .Checkpointer(store.array_handler())
            .restore(
                (path / info["arrays"]).absolute(),
                args=store.restore_args(item, restore_args),
            )
        )

    return store.from_store(skeleton, info["manifest"], read, where)


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


def _model_info(model: PyTree) -> dict[str, Any]:
    """The model's class and, when it rebuilds from them, the arguments it was built with;
    else why not. A `ValueError` when every argument was recorded and they do not rebuild it."""
    info: dict[str, Any] = {"class": name_of(type(model)), "arguments": None}
    recipe = recipe_of(model)
    if recipe is None:
        info["not_rebuildable"] = (
            f"{info['class']} is not a zoo.Rebuildable, which records the arguments it was "
            "built with"
        )
        return info
    difference = rebuild_difference(recipe, model)
    if difference is None:
        info["arguments"] = recipe.arguments
    elif recipe.omitted:
        info["not_rebuildable"] = f"{'; '.join(recipe.omitted)}; without it, {difference}"
    else:
        raise ValueError(
            f"zoo.save refuses this {recipe.name}: {difference}. Either it was changed after "
            "it was built (with eqx.tree_at, say), or its __init__ depends on more than its "
            "arguments. Build it "
            "with arguments that make this model; or save a pytree that holds it, "
            "zoo.save(path, {'model': model}), and load that with like={'model': template}."
        )
    return info


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


def _write_json_atomically(target: pathlib.Path, text: str) -> None:
    """Writes `target` through a synced temporary file renamed over it: readers see the old file
    or the whole new one, even after a crash."""
    temporary = target.with_name(f"{target.name}.tmp-{secrets.token_hex(8)}")
    with open(temporary, "w") as file:
        file.write(text)
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
    if info["format"] not in _FORMATS:
        raise ValueError(f"unknown format {info['format']!r}, expected {_FORMAT!r}")
    if not _ARRAYS.fullmatch(info["arrays"]):  # a bare name: never a path out of the save
        raise ValueError(f"malformed arrays directory {info['arrays']!r}")
    if not isinstance(info["manifest"], list) or not isinstance(info["model"]["class"], str):
        raise ValueError("malformed manifest or model")
    if not isinstance(info.get("scalars", []), list) or not isinstance(
        info.get("leaves", []), list
    ):
        raise ValueError("malformed scalars or leaves")


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


def _skeleton(info: dict, like: PyTree | None, where: str) -> PyTree:
    """What to load into: `like`, checked to be of the saved class and to have no leaf where
    the saved model had none, or the model rebuilt from its recorded arguments."""
    model_info = info["model"]
    saved_class = model_info["class"]
    if like is not None:
        store.check_class(saved_class, like, where)
        if "leaves" in info:  # saves before zoo.save/2 did not record them
            store.check_no_extra_leaves(info["leaves"], like, where)
        return like
    if model_info.get("arguments") is None:
        raise TypeError(
            f"{where} holds a {saved_class} that cannot be rebuilt by itself: "
            f"{model_info.get('not_rebuildable')}. Pass a model of the same structure: "
            "zoo.load(path, like=model), where model can be "
            "eqx.filter_eval_shape(Model, ..., key=jax.random.key(0))."
        )
    try:
        return rebuild_skeleton(saved_class, model_info["arguments"])
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
