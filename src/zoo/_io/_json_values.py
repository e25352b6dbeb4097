"""Values as JSON that decodes to exactly the value written: same type, same bits.

`zoo.save` records two kinds of values in `zoo.json`: the arguments a model was built with,
and the pytree's scalar leaves. Both must come back as they were, not as something equal
(`np.float16(0.5)` is not `0.5`, and `True` is not `1`), and a value that cannot come back
exactly must be refused before anything is written. So:

- `None`, `bool`, `int`, `str` and finite `float` are JSON's own (JSON reads `5` as an int and
  `5.0` as a float, and Python writes floats with the digits that read back to the same bits);
  a tuple is a JSON list;
- everything else is an object tagged `"__zoo__"`: a non-finite float or a complex by its
  bits, bytes in hex, a list, a dict, a dtype by name, and a NumPy scalar of any fixed-size
  dtype by its dtype and its bytes (bool, every int and float, longdouble, complex,
  datetime64, timedelta64, raw void, and `ml_dtypes` types such as bfloat16); `np.str_` and
  `np.bytes_` by their text and bytes; an array of up to `ARRAY_BYTES` by its dtype, shape
  and bytes (comes back as a NumPy array).

Anything else raises `Unrecordable`, naming where it was found.
"""

import math
import reprlib
from typing import Any

import jax
import ml_dtypes
import numpy as np

_TAG = "__zoo__"
_OLD_DTYPE_TAG = "__dtype__"  # how saves before the tags recorded a dtype
_SHORT = reprlib.Repr(maxother=80, maxstring=80)  # an argument may be a large array
# Array arguments up to this size are recorded (a table of side features, item counts);
# larger ones are left out of a save's zoo.json, and their model loads with like=.
ARRAY_BYTES = 2**20
# Dtypes whose layout depends on the machine: a save records how many mantissa bits they had.
_PLATFORM_DEPENDENT = {np.dtype(np.longdouble), np.dtype(np.clongdouble)}


class Unrecordable(Exception):
    """A value that JSON cannot give back exactly; the message names where it was."""


def encode(value: Any, where: str) -> Any:
    """`value` as JSON that `decode` turns back into it exactly; raises `Unrecordable`."""
    if value is None or type(value) in (bool, int, str):
        return value
    if type(value) is float:
        return value if math.isfinite(value) else _tagged("float", bits=_bits(np.float64(value)))
    if type(value) is complex:
        return _tagged("complex", bits=_bits(np.complex128(value)))
    if type(value) is bytes:
        return _tagged("bytes", hex=value.hex())
    if isinstance(value, np.generic):
        return _encode_numpy(value, where)
    if isinstance(value, np.ndarray | jax.Array):
        return _encode_array(value, where)
    if is_dtype(value):
        return _tagged("dtype", name=_dtype_name(np.dtype(value), where))
    if type(value) is tuple:
        return [encode(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if type(value) is list:
        return _tagged(
            "list", items=[encode(item, f"{where}[{i}]") for i, item in enumerate(value)]
        )
    if type(value) is dict and all(type(k) is str for k in value):
        items = {k: encode(v, f"{where}[{k!r}]") for k, v in value.items()}
        return _tagged("dict", items=items) if _TAG in items or _OLD_DTYPE_TAG in items else items
    raise Unrecordable(f"{where}={_SHORT.repr(value)} ({_kind(value)}) {_RECORDABLE}")


_RECORDABLE = (
    "is not a value a save can give back exactly: None, a bool, int, float, complex, str or "
    "bytes, a NumPy scalar, a dtype, a small array, or a tuple, list or str-keyed dict of them"
)


def decode(value: Any) -> Any:
    """The value `encode` wrote as `value`."""
    if isinstance(value, list):
        return tuple(decode(item) for item in value)
    if not isinstance(value, dict):
        return value
    if set(value) == {_OLD_DTYPE_TAG}:
        return np.dtype(value[_OLD_DTYPE_TAG])
    if _TAG not in value:
        return {k: decode(v) for k, v in value.items()}
    kind = value[_TAG]
    if kind == "float":
        return float(_from_bits(value["bits"], np.float64))
    if kind == "complex":
        return complex(_from_bits(value["bits"], np.complex128))
    if kind == "bytes":
        return bytes.fromhex(value["hex"])
    if kind == "list":
        return [decode(item) for item in value["items"]]
    if kind == "dict":
        return {k: decode(v) for k, v in value["items"].items()}
    if kind == "dtype":
        return dtype_named(value["name"])
    if kind == "numpy":
        return _decode_numpy(value)
    if kind == "ndarray":
        return _from_bits(value["bits"], dtype_named(value["dtype"]), value["shape"])
    raise ValueError(f"unknown value tag {kind!r}")


def is_dtype(value: Any) -> bool:
    """A dtype, a NumPy scalar type (np.float32) or JAX's (jnp.bfloat16); not Python's `float`,
    whose meaning depends on jax_enable_x64, nor `str` or any other builtin."""
    if isinstance(value, np.dtype):
        return True
    if not isinstance(value, type) or value.__module__ == "builtins":
        return False
    try:
        return np.dtype(value) != np.dtype(object)
    except TypeError:
        return False


def dtype_named(name: str) -> np.dtype:
    """The dtype `name` (as `_dtype_name` wrote it), `ml_dtypes`' types included."""
    try:
        return np.dtype(name)
    except TypeError:
        return np.dtype(getattr(ml_dtypes, name))


def _tagged(kind: str, **content) -> dict:
    return {_TAG: kind, **content}


def _kind(value: Any) -> str:
    return f"a {type(value).__module__}.{type(value).__qualname__}"


def _bits(value: np.generic) -> str:
    return np.asarray(value).tobytes().hex()


def _from_bits(bits: str, dtype, shape=None):
    """The scalar written as `bits`; with a `shape`, the array (a writable copy)."""
    array = np.frombuffer(bytes.fromhex(bits), dtype=dtype)
    return array[0] if shape is None else array.reshape(shape).copy()


def _encode_array(value, where: str) -> dict:
    if value.nbytes > ARRAY_BYTES:
        raise Unrecordable(
            f"{where} is an array of {value.nbytes} bytes; arrays of up to {ARRAY_BYTES} are "
            "recorded (in zoo.json)"
        )
    try:
        array = np.asarray(value)
    except Exception:  # a tracer (built under jax.jit), a PRNG key, ...
        raise Unrecordable(
            f"{where} is {_kind(value)}, an array with no values to record (traced?)"
        ) from None
    if array.dtype.hasobject:
        raise Unrecordable(f"{where} is an array of Python objects")
    name = _dtype_name(array.dtype, where)
    return _tagged("ndarray", dtype=name, shape=list(array.shape), bits=array.tobytes().hex())


def _dtype_name(dtype: np.dtype, where: str) -> str:
    """A name that `dtype_named` turns back into `dtype` (`<M8[s]`, `bfloat16`, ...)."""
    for name in (dtype.name, dtype.str):
        try:
            if dtype_named(name) == dtype:
                return name
        except (TypeError, AttributeError):
            continue
    raise Unrecordable(f"{where} has the dtype {dtype!r}, which has no name to record it by")


def _encode_numpy(value: np.generic, where: str) -> dict:
    if isinstance(value, np.str_):
        return _tagged("numpy", dtype="str_", text=str(value))
    if isinstance(value, np.bytes_):
        return _tagged("numpy", dtype="bytes_", hex=bytes(value).hex())
    dtype = value.dtype
    if dtype.hasobject:
        raise Unrecordable(f"{where}={_SHORT.repr(value)} is a NumPy scalar holding objects")
    entry = _tagged("numpy", dtype=_dtype_name(dtype, where), bits=_bits(value))
    if dtype in _PLATFORM_DEPENDENT:
        entry["mantissa_bits"] = int(np.finfo(dtype).nmant)
    return entry


def _decode_numpy(value: dict) -> np.generic:
    if value["dtype"] == "str_":
        return np.str_(value["text"])
    if value["dtype"] == "bytes_":
        return np.bytes_(bytes.fromhex(value["hex"]))
    dtype = dtype_named(value["dtype"])
    if "mantissa_bits" in value and np.finfo(dtype).nmant != value["mantissa_bits"]:
        raise ValueError(
            f"a {dtype} was saved on a machine whose {dtype} has {value['mantissa_bits']} "
            f"mantissa bits; this one's has {np.finfo(dtype).nmant}"
        )
    return _from_bits(value["bits"], dtype)


def same(a: Any, b: Any) -> bool:
    """Whether two static values are the same: equal, and of the same type (so `1` is not
    `True` and `(1,)` not `[1]`); values whose `==` is not a bool (arrays) must be one object."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    try:
        return bool(a == b)
    except Exception:  # an array's ambiguous truth value, say
        return False
