"""How a model is rebuilt from its own hyperparameters: saved models load with no template.

A model class opts in by subclassing `zoo.Rebuildable` with a stable name:

```{.python notest}
class TwoTower(zoo.Rebuildable, saved_as="zoo.TwoTower"):
    ...
```

Nothing is added to the model's pytree: two models of one architecture are one pytree
structure however they were built. When `zoo.save` writes a model it asks the model for its
constructor arguments, `model.rebuild_arguments()`, derived from its fields (its
hyperparameters, and the shapes and dtypes of its arrays), and records them as JSON.
`zoo.load` rebuilds the skeleton with `eqx.filter_eval_shape(cls, **arguments)` (no memory for
the weights) and fills it with the saved arrays.
"""

import dataclasses
import inspect
import json
import reprlib
import sys
from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import numpy as np

# The argument every Equinox constructor takes for its initialisation; never recorded.
_KEY_ARGUMENT = "key"
_DTYPE_TAG = "__dtype__"

# Bounded reprs for errors: an argument may be a large array.
_SHORT = reprlib.Repr(maxother=100, maxstring=100)

_REGISTRY: dict[str, type] = {}
_NAMES: dict[type, str] = {}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How to rebuild a module: its class's registered name and constructor arguments.

    `arguments` is canonical JSON, or `None` when an argument cannot be recorded; `problem`
    then says which.
    """

    name: str
    arguments: str | None
    problem: str | None = None


class Rebuildable(eqx.Module):
    """Subclass this for models that `zoo.load` rebuilds with no template.

    **Class arguments:**

    - `saved_as`: the name saves record for the class (default `module.qualname`): keep it
      stable across refactors, or old saves stop loading without a template.

    A save records `model.rebuild_arguments()`: by default, every argument of the class's
    `__init__` (but `key`) that is also a field of the model, under the same name, such as its
    static hyperparameters. Arguments that leave no field take their defaults when the model is
    rebuilt, which is right for those that shape no array (an initialiser, say); override
    `rebuild_arguments` for the others (a dtype read off an array, a flag that decides whether a
    layer exists). `zoo.save` rebuilds the model's skeleton from the arguments and compares it
    with the model's arrays, so arguments that do not rebuild it are caught at save time: the
    save then records why, and `zoo.load` needs `like=`.

    Arguments are recorded when they are JSON values (numbers, strings, `None`, sequences and
    string-keyed mappings of them) or dtypes.

    Nothing is stored in the model: `Rebuildable` adds no field, so the model's pytree holds
    its arrays and hyperparameters only.

    !!! example

        ```python
        class Scorer(zoo.Rebuildable, saved_as="mylab.Scorer"):
            embedding: zoo.Embedding
            size: int = eqx.field(static=True)

            def __init__(self, size: int, *, key):
                self.embedding = zoo.Embedding(size, 8, key=key)
                self.size = size

        zoo.save("runs/scorer", Scorer(100, key=jax.random.key(0)))
        zoo.load("runs/scorer")  # rebuilt as Scorer(size=100, key=...)
        ```
    """

    def __init_subclass__(cls, *, saved_as: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        # (Not `name=`: Equinox's metaclass takes that for the class's own name.)
        name = f"{cls.__module__}.{cls.__qualname__}" if saved_as is None else saved_as
        _register(cls, name)

    def rebuild_arguments(self) -> dict[str, Any]:
        """The constructor arguments, all but `key`, that build a model of this one's
        structure: each argument of `__init__` that is also a field of the model."""
        fields = {field.name for field in dataclasses.fields(self)}
        parameters = inspect.signature(type(self).__init__).parameters
        return {
            name: getattr(self, name)
            for name in parameters
            if name in fields and name not in ("self", _KEY_ARGUMENT)
        }


def _register(cls: type, name: str) -> None:
    taken = _REGISTRY.get(name)
    # The same class defined again (a reloaded module) takes its name back; another may not.
    if taken is not None and _qualified(taken) != _qualified(cls):
        raise TypeError(f"{_qualified(cls)}: saved_as={name!r} is taken by {_qualified(taken)}.")
    _REGISTRY[name] = cls
    _NAMES[cls] = name


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _recipe(name: str, arguments: dict[str, Any]) -> Recipe:
    try:
        encoded = {argument: _encode(value, argument) for argument, value in arguments.items()}
    except _Unrecordable as problem:
        return Recipe(name, None, str(problem))
    return Recipe(name, json.dumps(encoded, sort_keys=True))


class _Unrecordable(Exception):
    pass


def _encode(value: Any, where: str) -> Any:
    """`value` as JSON, dtypes tagged; raises `_Unrecordable` naming `where` otherwise."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic) and not isinstance(value, np.void):
        return value.item()
    if _is_dtype(value):
        return {_DTYPE_TAG: np.dtype(value).name}
    if isinstance(value, list | tuple):
        return [_encode(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: _encode(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise _Unrecordable(
        f"{where}={_SHORT.repr(value)} is not a number, string, dtype, None, or a sequence or "
        "mapping of them"
    )


def _is_dtype(value: Any) -> bool:
    if isinstance(value, np.dtype):
        return True
    # NumPy scalar types (np.float32) and JAX's (jnp.bfloat16), but not Python's `float`, whose
    # meaning depends on jax_enable_x64, nor `str` or any other builtin.
    if not isinstance(value, type) or value.__module__ == "builtins":
        return False
    return _has_dtype(value)


def _has_dtype(value: type) -> bool:
    try:
        return np.dtype(value) != np.dtype(object)
    except TypeError:
        return False


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_decode(item) for item in value)
    if isinstance(value, dict):
        if set(value) == {_DTYPE_TAG}:
            return np.dtype(value[_DTYPE_TAG])
        return {k: _decode(v) for k, v in value.items()}
    return value


def name_of(cls: type) -> str:
    """The name a class is recorded under: its registered name; `zoo.Name` for a class that
    `zoo` exports (e.g. `zoo.TrainState`, whatever private module defines it); else
    `module.qualname`."""
    if cls in _NAMES:
        return _NAMES[cls]
    package = sys.modules.get("zoo")
    if cls.__module__.startswith("zoo.") and getattr(package, cls.__qualname__, None) is cls:
        return f"zoo.{cls.__qualname__}"
    return _qualified(cls)


def recipe_of(module: Any) -> Recipe | None:
    """How to rebuild a `Rebuildable` module from its constructor arguments, else `None`."""
    if not isinstance(module, Rebuildable):
        return None
    # A subclass whose __init__ takes fewer arguments than its parent's gets only its own.
    parameters = inspect.signature(type(module).__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    arguments = module.rebuild_arguments()
    if not takes_any:
        arguments = {name: value for name, value in arguments.items() if name in parameters}
    return _recipe(name_of(type(module)), arguments)


def rebuild_skeleton(name: str, arguments: str) -> Any:
    """The module `name(**arguments)` as shapes and dtypes only, with no memory for its arrays.

    **Raises:** `LookupError` when no class of that name is registered in this process.
    """
    cls = _REGISTRY.get(name)
    if cls is None:
        raise LookupError(name)
    decoded = {k: _decode(v) for k, v in json.loads(arguments).items()}
    signature = inspect.signature(cls)
    if _KEY_ARGUMENT in signature.parameters:
        decoded[_KEY_ARGUMENT] = jax.random.key(0)  # any key: the arrays are replaced
    bound = inspect.BoundArguments(signature, decoded)
    return eqx.filter_eval_shape(cls, *bound.args, **bound.kwargs)
