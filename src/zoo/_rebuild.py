"""How zoo models record their constructor arguments, so that a saved model loads with no template.

A model class opts in with one line, by subclassing `Rebuildable` with a stable name:

```{.python notest}
class TwoTower(Rebuildable, saved_as="zoo.TwoTower"):
    ...
```

Each instance then carries a `Recipe` (its class's name and its constructor arguments as
canonical JSON) in a static field: the model's array leaves do not change, and the recipe
survives `jax.tree.map`, `eqx.tree_at`, `jax.jit` and training, which rebuild modules without
calling `__init__`. `zoo.load` rebuilds the skeleton with `eqx.filter_eval_shape(cls, **arguments)`
(no memory for the weights) and fills it with the saved arrays.
"""

import dataclasses
import functools
import inspect
import json
import reprlib
import sys
from collections.abc import Callable, Mapping
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

    Hashable and compared by value, as a static field must be. `arguments` is canonical JSON, or
    `None` when an argument cannot be recorded; `problem` then says which.
    """

    name: str
    arguments: str | None
    problem: str | None = None


class Rebuildable(eqx.Module):
    """Mixin for zoo models that `zoo.load` can rebuild from their constructor arguments.

    **Class arguments:**

    - `saved_as`: the name saves record for the class (default `module.qualname`): keep it
      stable across refactors, or old saves stop loading without a template.
    - `ignore`: constructor arguments that do not affect the model's structure and cannot be
      recorded, such as an initialiser function; they take their defaults when rebuilt.

    `key` is never recorded. Arguments are recorded when they are JSON values (numbers,
    strings, `None`, sequences and string-keyed mappings of them) or dtypes; any other argument
    (a callable activation, say) makes that instance loadable only with `zoo.load(..., like=)`.
    """

    zoo_recipe: Recipe | None = eqx.field(default=None, static=True, repr=False, kw_only=True)

    def __init_subclass__(
        cls, *, saved_as: str | None = None, ignore: tuple[str, ...] = (), **kwargs
    ):
        super().__init_subclass__(**kwargs)
        # (Not `name=`: Equinox's metaclass takes that for the class's own name.)
        name = f"{cls.__module__}.{cls.__qualname__}" if saved_as is None else saved_as
        _register(cls, name)
        init = cls.__dict__.get("__init__")
        if init is not None:  # else it inherits a recording __init__, which records type(self)
            signature = inspect.signature(init)
            _check_ignorable(cls, signature, ignore)
            cls.__init__ = _recording(init, signature, frozenset(ignore) | {_KEY_ARGUMENT})


def _register(cls: type, name: str) -> None:
    taken = _REGISTRY.get(name)
    # The same class defined again (a reloaded module) takes its name back; another may not.
    if taken is not None and _qualified(taken) != _qualified(cls):
        raise TypeError(f"{_qualified(cls)}: saved_as={name!r} is taken by {_qualified(taken)}.")
    _REGISTRY[name] = cls
    _NAMES[cls] = name


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _check_ignorable(cls: type, signature: inspect.Signature, ignore: tuple[str, ...]) -> None:
    for argument in ignore:
        parameter = signature.parameters.get(argument)
        if parameter is None or parameter.default is inspect.Parameter.empty:
            raise TypeError(
                f"{cls.__qualname__}: ignore={ignore!r} names {argument!r}, which is not an "
                "argument of __init__ with a default; an ignored argument takes its default when "
                "the model is rebuilt."
            )


def _recording(init: Callable, signature: inspect.Signature, ignore: frozenset[str]) -> Callable:
    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        # The outermost __init__ finishes last, so a subclass's recipe wins over its parent's.
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()  # recorded, so a later change of a default cannot alter a rebuild
        _, *arguments = bound.arguments.items()  # all but `self`
        arguments = {k: v for k, v in arguments if k not in ignore}
        self.zoo_recipe = _recipe(name_of(type(self)), arguments)

    return __init__


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
    """The recipe of a rebuildable module, else `None`."""
    return module.zoo_recipe if isinstance(module, Rebuildable) else None


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
