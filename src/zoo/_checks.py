"""The argument checks every public entry point shares, so that all of them follow one rule.

- Python and NumPy scalars are alike: `np.int64(32)` is an int, `np.float32(0.1)` a float.
- `bool` (and `np.bool_`) is never an int or a float, though Python says `True == 1`.
- `nan` and `inf` are never valid numbers.
- A refusal names the argument, the value it got and what it expected, and shows a right call.

Each check returns the value as a plain Python scalar, so what is stored (a static field, a
recorded run argument) does not depend on how the caller spelled it. Beside the scalars: a PRNG
`key` (never an int seed), a `path`, a floating `dtype`, a `numeric_array` column.
"""

import math
import os
import pathlib
from collections.abc import Collection
from typing import Any

import jax
import numpy as np


def _refuse(error: type[Exception], name: str, expected: str, value: Any, example: str):
    suffix = f" For example: {example}" if example else ""
    raise error(f"{name} must be {expected}; got {describe(value)}.{suffix}")


def is_int(value: Any) -> bool:
    """Whether `value` is a Python or NumPy integer, and not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def is_real(value: Any) -> bool:
    """Whether `value` is a Python or NumPy int or float, and not a bool."""
    return is_int(value) or isinstance(value, float | np.floating)


def integer(
    name: str, value: Any, *, example: str = "", minimum: int | None = None, expected: str = ""
) -> int:
    """`value` as an `int`, refused unless it is an integer (not a bool) `>= minimum`;
    `expected` words what is wanted when the default (`an int >= minimum`) says it badly."""
    expected = expected or ("an int" if minimum is None else f"an int >= {minimum}")
    return _bounded_int(name, value, expected, minimum, example)


def positive_int(name: str, value: Any, *, example: str = "") -> int:
    """`value` as an `int`, refused unless it is an integer >= 1."""
    return _bounded_int(name, value, "a positive int", 1, example)


def _bounded_int(name, value, expected, minimum, example) -> int:
    if not is_int(value):
        _refuse(TypeError, name, expected, value, example)
    if minimum is not None and value < minimum:
        _refuse(ValueError, name, expected, value, example)
    return int(value)


def optional_positive_int(name: str, value: Any, *, example: str = "") -> int | None:
    return None if value is None else positive_int(name, value, example=example)


def real(
    name: str,
    value: Any,
    *,
    example: str = "",
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """`value` as a finite `float`, refused unless it lies in the interval given.

    `low`/`high` bound the interval (`None`: unbounded); `low_open`/`high_open` exclude the
    bound itself.
    """
    expected = "a finite float" + _interval(low, high, low_open, high_open)
    if not is_real(value):
        _refuse(TypeError, name, expected, value, example)
    number = float(value)
    outside = (
        not math.isfinite(number)
        or (low is not None and (number <= low if low_open else number < low))
        or (high is not None and (number >= high if high_open else number > high))
    )
    if outside:
        _refuse(ValueError, name, expected, value, example)
    return number


def _interval(low, high, low_open, high_open) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>' if low_open else '>='} {low:g}"
    if low is None:
        return f" {'<' if high_open else '<='} {high:g}"
    return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def positive_real(name: str, value: Any, *, example: str = "") -> float:
    """`value` as a finite `float` > 0."""
    return real(name, value, example=example, low=0.0, low_open=True)


def probability(name: str, value: Any, *, example: str = "") -> float:
    """`value` as a `float` strictly between 0 and 1 (a fraction to hold out or drop)."""
    return real(name, value, example=example, low=0.0, high=1.0, low_open=True, high_open=True)


def boolean(name: str, value: Any, *, example: str = "") -> bool:
    """`value` as a `bool`; `0`/`1` and other truthy values are refused."""
    if not isinstance(value, bool | np.bool_):
        _refuse(TypeError, name, "True or False", value, example)
    return bool(value)


def one_of(name: str, value: Any, choices: Collection, *, example: str = "") -> Any:
    """`value` itself, refused unless it is one of `choices`."""
    if not isinstance(value, str | int | float | bool | None) or value not in choices:
        listed = ", ".join(repr(choice) for choice in choices)
        _refuse(ValueError, name, f"one of {listed}", value, example)
    return value


# -- Integers from the host: never a wrapped id. ------------------------------------------------
#
# Without `jax_enable_x64`, JAX stores an int64 NumPy array as int32 by dropping the high bits:
# the id 2**32 + 3 becomes row 3, silently. Every entry point that hands host integers to JAX
# (lookups, datasets, samplers, metrics, loaders) checks them here first.


def stored_dtype(dtype: Any) -> np.dtype:
    """The dtype JAX stores an array of `dtype` as (int64 becomes int32 without x64)."""
    return np.dtype(jax.dtypes.canonicalize_dtype(dtype))


def fits_int32(name: str, values: Any, *, dtype: Any = None, example: str = "") -> np.ndarray:
    """`values` as a NumPy array, refused when an integer in it does not fit `dtype`.

    `dtype` is what the values become; by default what JAX stores them as (int32 for int64
    input, unless `jax_enable_x64` is set). Non-integer arrays and JAX arrays (already stored)
    pass unchanged. The refusal is a `ValueError` naming `name`, the first value that does not
    fit, its position and the range that fits.
    """
    array = np.asarray(values)
    if not np.issubdtype(array.dtype, np.integer) or array.size == 0:
        return array
    target = np.dtype(stored_dtype(array.dtype) if dtype is None else dtype)
    info = np.iinfo(target)
    if array.min() >= info.min and array.max() <= info.max:
        return array
    outside = np.argwhere((array < info.min) | (array > info.max))[0]
    where = f"[{', '.join(map(str, outside))}]" if array.ndim else ""
    value = array[tuple(outside)]
    suffix = example or "remap ids to 0..n-1, e.g. np.unique(ids, return_inverse=True)[1]."
    raise ValueError(
        f"{name} must hold integers that fit {target.name}, in [{info.min}, {info.max}]; got "
        f"{value}{' at ' + where if where else ''} ({array.dtype}), which JAX would silently "
        f"wrap into another value. For example: {suffix}"
    )


def key(name: str, value: Any, *, example: str = "") -> Any:
    """`value` itself, refused unless it is a JAX PRNG key: a typed key (`jax.random.key(0)`)
    or a legacy raw key (`jax.random.PRNGKey(0)`, uint32 of shape `(2,)`).

    An int seed is the common mistake: JAX would fail deep inside `jax.random` with a message
    about dtypes, so it is refused here by name.
    """
    if _is_key(value):
        return value
    expected = "a PRNG key such as jax.random.key(0)"
    if is_int(value):
        raise TypeError(
            f"{name} must be {expected}; got {value!r}, an int seed. Make a key from the seed: "
            f"{name}=jax.random.key({int(value)})."
        )
    _refuse(TypeError, name, expected, value, example)


def _is_key(value: Any) -> bool:
    if not isinstance(value, jax.Array):  # tracers are jax.Arrays too
        return False
    if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        return True
    return value.dtype == np.uint32 and value.shape[-1:] == (2,)


def describe(value: Any) -> str:
    """A value as a message shows it: its repr, but arrays by dtype and shape, not their
    contents, and a long repr by its type."""
    if hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, np.generic):
        return f"an array of dtype {value.dtype} and shape {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 80 else f"a {type(value).__name__}"


def float_dtype(name: str, value: Any, *, example: str = "") -> Any:
    """`value` itself (`None` passes: the default float), refused unless it names a floating
    dtype. Not a dtype at all: `TypeError`; an integer or bool dtype: `ValueError`."""
    if value is None:
        return None
    expected = "a floating dtype such as jnp.float32 or jnp.bfloat16"
    try:
        dtype = np.dtype(value)
    except (TypeError, ValueError):
        _refuse(TypeError, name, expected, value, example)
    if not jax.numpy.issubdtype(dtype, jax.numpy.floating):
        _refuse(ValueError, name, expected, dtype.name, example)
    return value


def path(name: str, value: Any, *, example: str = "") -> pathlib.Path:
    """`value` as a `pathlib.Path`, refused unless it is a `str` or `os.PathLike` (not `None`,
    not empty)."""
    if not isinstance(value, str | os.PathLike):
        _refuse(TypeError, name, "a path (a str or pathlib.Path)", value, example)
    if isinstance(value, str) and not value.strip():
        _refuse(ValueError, name, "a non-empty path", value, example)
    return pathlib.Path(value)


def numeric_array(name: str, array: Any, *, example: str = "") -> Any:
    """`array` itself, refused unless its dtype is numeric (bool, int, float or complex): a
    column of strings, dates or Python objects would fail later, deep inside JAX."""
    kind = np.dtype(array.dtype).kind
    if kind == "O":
        raise ValueError(f"{name} is ragged or not numeric: got an array of Python objects.")
    if kind not in "biufc":
        _refuse(TypeError, name, "a numeric array (bool, int or float)", array, example)
    return array


def no_refs(tree: Any, where: str, fix: str) -> None:
    """Refuses a pytree holding a `jax.Ref`: zoo's models hold plain arrays. A ref is treated
    as static by `eqx.filter_jit`, dropped by `eqx.filter_grad` and left out by a filter on
    arrays, so a model holding one would be trained or saved without it, silently."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if isinstance(leaf, jax.Ref):
            raise TypeError(
                f"{where} got a model holding a jax.Ref at {jax.tree_util.keystr(path)}. Models "
                f"hold plain arrays: {fix} Pass the array instead, e.g. "
                "`eqx.tree_at(lambda m: m.table.weight, model, jax.freeze(ref))`."
            )


def raise_if(x: Any, bad: Any, report) -> Any:
    """`x`, through a runtime check: where `bad` holds anywhere (over a whole `jax.vmap`
    batch too), `report(x)` runs on the host and raises, before anything reads `x`.

    Unlike `eqx.error_if` this raises whatever Equinox's error mode (`EQX_ON_ERROR=nan` would
    turn an integer into the largest int, which a gather clamps to the last row), and the
    message may show values: `report` gets `x` (under `jax.vmap`, the whole batch's).
    """
    import equinox.internal as eqxi  # only here: importing zoo stays light

    def fail(x):
        struct = jax.ShapeDtypeStruct(x.shape, x.dtype)
        return jax.pure_callback(report, struct, x, vmap_method="expand_dims")

    return jax.lax.cond(eqxi.unvmap_any(jax.numpy.any(bad)), fail, lambda x: x, x)
