"""How a model is rebuilt from the arguments it was built with: saved models load with no template.

A model class opts in by subclassing `zoo.Rebuildable`, which registers it under a stable name:

```{.python notest}
class TwoTower(zoo.Rebuildable, saved_as="zoo.TwoTower"):
    ...
```

Its constructor then records the arguments it is called with (JSON, in one static field that
compares equal across models, so two models of one architecture stay one pytree structure).
`zoo.save` rebuilds the model from them, as shapes only (`jax.eval_shape`), and compares
the result with the model, static fields included: arguments that would rebuild something else
never reach a save. `zoo.load` finds the class by its registered name, rebuilds the skeleton
the same way and fills it with the saved arrays.
"""

import dataclasses
import functools
import inspect
import json
import reprlib
from typing import Any

import equinox as eqx
import jax
import numpy as np

from ._json_values import Unrecordable, decode, encode, same

# The argument every Equinox constructor takes for its initialisation; never recorded.
_KEY_ARGUMENT = "key"
_RECORD_FIELD = "_construction"
_SHORT = reprlib.Repr(maxother=60, maxstring=60)

_REGISTRY: dict[str, type] = {}  # registered name -> Rebuildable class
_NAMES: dict[type, str] = {}  # class -> the name saves record it by


@dataclasses.dataclass(frozen=True, eq=False)
class _Construction:
    """The arguments a model was built with, as JSON, and those that JSON cannot hold.

    Not part of what the model is: every record equals every other, so that models built
    differently (another initialiser, say) are one pytree structure and compile once.
    """

    arguments: str
    omitted: tuple[tuple[str, str], ...]  # (argument, why it was not recorded)

    def __eq__(self, other):
        return isinstance(other, _Construction)

    def __hash__(self):
        return hash(_Construction)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How to rebuild a model: its class's registered name and its constructor arguments (JSON),
    and why any argument it was built with is missing from them."""

    name: str
    arguments: dict[str, Any]
    omitted: tuple[str, ...]


class Rebuildable(eqx.Module):
    """Subclass this for models that `zoo.load` rebuilds with no template.

    **Class arguments:**

    - `saved_as`: the name saves record for the class (default `module.qualname`): keep it
      stable across refactors, or old saves stop loading without a template. Subclassing
      registers the class under it; `zoo.load` finds classes by that name only.

    A model records the arguments its `__init__` was called with (defaults included, `key`
    excluded) when it is built, and `zoo.save` writes them to `zoo.json`: `zoo.load` calls the
    class with them again (as shapes only, with `jax.eval_shape`) and fills in the saved
    arrays. So a field computed from the arguments (a `sign` set by `negate=True`) comes back
    right, however it was computed. Arguments are recorded when they are values JSON can give
    back exactly: `None`, bools, ints, floats, complex numbers, strings, bytes, NumPy scalars,
    dtypes, arrays of up to 1 MiB, and tuples, lists and str-keyed dicts of them. Others (a
    function, a larger array) are left out, and the model is rebuilt with their defaults.

    `zoo.save` rebuilds the model from the recorded arguments and compares it with the model,
    every static field and every array's shape and dtype:

    - when they differ because an argument was left out (`activation=my_function`), the save
      goes on and records why: `zoo.load` then needs `like=`;
    - when they differ although every argument was recorded (the model was changed after it
      was built, with `eqx.tree_at` say, or its `__init__` depends on more than its
      arguments), `zoo.save` raises a `ValueError` naming the class and the first field that
      differs, before anything is written.

    A class whose `__init__` is the one dataclasses write (no `__init__` of its own) is
    rebuilt from its fields, which are its arguments.

    The record is one static field, `_construction`, that every model's equals: it adds no
    leaf and does not change the pytree structure, so `jax.tree.map` over two models built
    differently works, and they compile once.

    !!! example

        ```python
        class Signed(zoo.Rebuildable, saved_as="mylab.Signed"):
            embedding: zoo.Embedding
            sign: float = eqx.field(static=True)

            def __init__(self, size: int, *, negate: bool = False, key):
                self.embedding = zoo.Embedding(size, 8, key=key)
                self.sign = -1.0 if negate else 1.0

        zoo.save("runs/signed", Signed(100, negate=True, key=jax.random.key(0)))
        zoo.load("runs/signed").sign  # -1.0: rebuilt as Signed(size=100, negate=True, key=...)
        ```
    """

    _construction: _Construction | None = eqx.field(
        static=True, init=False, repr=False, default=None
    )

    def __init_subclass__(cls, *, saved_as: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        # (Not `name=`: Equinox's metaclass takes that for the class's own name.)
        if saved_as is not None and (not isinstance(saved_as, str) or not saved_as):
            raise TypeError(
                f"saved_as must be a non-empty str, the name saves record the class by; got "
                f"{saved_as!r}. For example: class {cls.__name__}(zoo.Rebuildable, "
                f'saved_as="mylab.{cls.__name__}")'
            )
        _register(cls, _qualified(cls) if saved_as is None else saved_as)
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording(cls.__init__)

    def rebuild_arguments(self) -> dict[str, Any]:
        """The arguments (all but `key`) that rebuild this model: those it was built with, as
        recorded; for a class with the dataclass `__init__`, its fields.

        Override it to give an argument that cannot be recorded as one that can (`zoo.MLP`
        gives an activation function of `jax.nn` by its name), starting from
        `super().rebuild_arguments()`.
        """
        if self._construction is None:
            return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        return {k: decode(v) for k, v in json.loads(self._construction.arguments).items()}


def _recording(init):
    """`init`, recording its arguments on the model when it is the model's own constructor
    (a subclass's `super().__init__(...)` leaves the recording to the subclass's)."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if type(self).__init__ is __init__:
            object.__setattr__(self, _RECORD_FIELD, _construction(signature, self, args, kwargs))

    return __init__


def _construction(signature: inspect.Signature, self, args, kwargs) -> _Construction:
    bound = signature.bind(self, *args, **kwargs)
    bound.apply_defaults()
    parameters = signature.parameters
    recorded, omitted = {}, []
    for index, (name, value) in enumerate(bound.arguments.items()):
        if index == 0 or name == _KEY_ARGUMENT:  # self, and the initialisation's key
            continue
        try:
            recorded[name] = encode(value, name)
        except Unrecordable as why:
            if value is not parameters[name].default:  # a default rebuilds as itself
                omitted.append((name, str(why)))
    return _Construction(json.dumps(recorded, sort_keys=True), tuple(omitted))


def _register(cls: type, name: str) -> None:
    taken = _REGISTRY.get(name)
    # The same class defined again (a reloaded module) takes its name back; another may not.
    if taken is not None and _qualified(taken) != _qualified(cls):
        raise TypeError(f"{_qualified(cls)}: saved_as={name!r} is taken by {_qualified(taken)}.")
    _REGISTRY[name] = cls
    _NAMES[cls] = name


def record_name(name: str):
    """A class decorator: saves and checkpoints name the class `name` (a class that is not
    `Rebuildable` is never rebuilt; its name only checks `like=` against the save)."""

    def decorate(cls: type) -> type:
        _NAMES[cls] = name
        return cls

    return decorate


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def name_of(cls: type) -> str:
    """The name a class is recorded under: the name it registered, else `module.qualname`."""
    return _NAMES.get(cls, _qualified(cls))


def recipe_of(model: Any) -> Recipe | None:
    """How to rebuild a `Rebuildable` model, else `None`."""
    if not isinstance(model, Rebuildable):
        return None
    arguments = {}
    omitted = {} if model._construction is None else dict(model._construction.omitted)
    given = model.rebuild_arguments()
    if not isinstance(given, dict) or not all(isinstance(name, str) for name in given):
        raise TypeError(
            f"{_qualified(type(model))}.rebuild_arguments() must return a dict from argument "
            f"names to values, such as super().rebuild_arguments() | {{'size': 3}}; got "
            f"{_SHORT.repr(given)}."
        )
    for name, value in given.items():
        try:
            arguments[name] = encode(value, name)
        except Unrecordable as why:
            omitted[name] = str(why)
        else:
            omitted.pop(name, None)  # given by rebuild_arguments in a form that records
    return Recipe(name_of(type(model)), arguments, tuple(omitted.values()))


def rebuild_skeleton(name: str, arguments: dict[str, Any]) -> Any:
    """The model `name(**arguments)` as shapes and dtypes only, with no memory for its arrays.

    **Raises:** `LookupError` when no class of that name is registered in this process.
    """
    cls = _REGISTRY.get(name)
    if cls is None:
        raise LookupError(name)
    decoded = {k: decode(v) for k, v in arguments.items()}
    signature = inspect.signature(cls)
    if _KEY_ARGUMENT in signature.parameters:
        decoded[_KEY_ARGUMENT] = jax.random.key(0)  # any key: the arrays are replaced
    bound = inspect.BoundArguments(signature, decoded)
    return _eval_shape(lambda: cls(*bound.args, **bound.kwargs))


def _eval_shape(build):
    """`build()` with its JAX arrays as shapes only (no memory for them); the rest (NumPy
    arrays and scalars, static fields) as built. Unlike `eqx.filter_eval_shape`, NumPy leaves
    stay NumPy, of their own dtype (a datetime64 is no JAX type), and the arguments are closed
    over, not traced: a constructor may compute a static field from an array argument's values.
    """
    rest = []

    def arrays_of_build():
        arrays, static = eqx.partition(build(), lambda x: isinstance(x, jax.Array))
        rest.append(static)
        return arrays

    shapes = jax.eval_shape(arrays_of_build)
    return eqx.combine(shapes, rest[0])


def call_of(recipe: Recipe) -> str:
    """`mylab.Scorer(size=100, negate=True)`: the call a recipe makes, for messages."""
    shown = ", ".join(f"{k}={_SHORT.repr(decode(v))}" for k, v in recipe.arguments.items())
    return f"{recipe.name}({shown})"


def rebuild_difference(recipe: Recipe, model: Any) -> str | None:
    """How the model that `recipe` rebuilds differs from `model` (the first static field,
    array shape or dtype, or structure that does; or what rebuilding it raises), or `None`
    when it does not."""
    try:
        skeleton = rebuild_skeleton(recipe.name, recipe.arguments)
    except Exception as error:  # whatever the constructor raises; it is reported, not hidden
        return f"{call_of(recipe)} raises {type(error).__name__}: {error}"
    difference = _difference(model, skeleton, "")
    if difference is None:
        return None
    return f"rebuilt from the arguments it was built with, {difference}"


def _is_array_like(x) -> bool:
    return isinstance(x, jax.Array | np.ndarray | jax.ShapeDtypeStruct)


_SCALARS = (bool, int, float, complex, str, bytes, np.generic)


def _holds_scalar(x) -> bool:
    """A leaf a saved scalar can take the place of (eval_shape makes a NumPy scalar 0-d)."""
    return isinstance(x, _SCALARS) or (_is_array_like(x) and x.shape == ())


def _show(x) -> str:
    if _is_array_like(x):
        return f"{x.dtype}[{','.join(map(str, x.shape))}]"
    return _SHORT.repr(x)


def _would_be(where: str, built: Any, rebuilt: Any) -> str:
    return f"{where} would be {_show(rebuilt)}, not {_show(built)}"


def _difference(built: Any, rebuilt: Any, path: str) -> str | None:
    """The first place where `rebuilt` (a skeleton) does not have the structure of `built`."""
    where = path or "the model"
    if isinstance(built, _SCALARS) and _holds_scalar(rebuilt):
        return None  # its value and type come back from the save
    if _is_array_like(built) and _is_array_like(rebuilt):
        same_spec = (built.shape, str(built.dtype)) == (rebuilt.shape, str(rebuilt.dtype))
        return None if same_spec else _would_be(where, built, rebuilt)
    if type(built) is not type(rebuilt):
        return _would_be(where, built, rebuilt)
    if isinstance(built, eqx.Module):
        return _module_difference(built, rebuilt, path)
    children, treedef = jax.tree_util.tree_flatten_with_path(
        built, is_leaf=lambda x: x is not built
    )
    if jax.tree_util.treedef_is_leaf(treedef):  # a function, say: the skeleton's is loaded
        return None if same(built, rebuilt) else _would_be(where, built, rebuilt)
    others, other_treedef = jax.tree_util.tree_flatten_with_path(
        rebuilt, is_leaf=lambda x: x is not rebuilt
    )
    if treedef != other_treedef:
        keys = [jax.tree_util.keystr(p) for p, _ in children]
        other_keys = [jax.tree_util.keystr(p) for p, _ in others]
        return f"{where} would hold {other_keys}, not {keys}"
    for (key, child), (_, other) in zip(children, others, strict=True):
        found = _difference(child, other, path + jax.tree_util.keystr(key))
        if found is not None:
            return found
    return None


def _module_difference(built: eqx.Module, rebuilt: eqx.Module, path: str) -> str | None:
    for field in dataclasses.fields(built):
        if field.name == _RECORD_FIELD:
            continue
        value, other = getattr(built, field.name), getattr(rebuilt, field.name)
        where = f"{path}.{field.name}"
        if field.metadata.get("static", False):
            if not same(value, other):
                return _would_be(f"the static field {where}", value, other)
        elif (found := _difference(value, other, where)) is not None:
            return found
    return None
