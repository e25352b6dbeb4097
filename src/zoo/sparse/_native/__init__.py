"""zoo.sparse's native CPU kernels: row gathers and in-place row updates through XLA's FFI.

The C++ source (`kernels.cc`) is compiled when the package is installed (`hatch_build.py`). This
module loads the library on first use, registers its handlers with XLA, and decides per traced
step which path runs: `kernels()` says which and why. The environment variable
`ZOO_SPARSE_KERNELS` chooses: `auto` (the default: native on CPU where the library is built),
`native` (an error where it cannot run) or `jax` (XLA's own gather and scatter everywhere).
"""

import ctypes
import functools
import os
import pathlib
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .._lookups import tables

VARIABLE = "ZOO_SPARSE_KERNELS"
_CHOICES = ("auto", "native", "jax")
LIBRARY = pathlib.Path(__file__).with_name("_zoo_kernels.so")
_TARGETS = {
    "zoo_gather_rows": "ZooGatherRows",
    "zoo_scatter_rows": "ZooScatterRows",
    "zoo_scatter_add_rows": "ZooScatterAddRows",
    "zoo_scatter_add_rows_scaled": "ZooScatterAddRowsScaled",
    "zoo_rowwise_adagrad": "ZooRowwiseAdagrad",
    "zoo_lazy_adam": "ZooLazyAdam",
    "zoo_scatter_add_into_zeros": "ZooScatterAddIntoZeros",
    "zoo_sort_ids": "ZooSortIds",
    "zoo_sum_squares": "ZooSumSquares",
}
# The kernels that add or compute do float32 and float64; gathers and stores move any dtype.
ARITHMETIC_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64))


class Kernels(NamedTuple):
    """Which path `zoo.sparse` takes for its row gathers and updates, and why.

    **Fields:**

    - `path`: `"native"` (zoo's CPU kernels, `kernels.cc`) or `"jax"` (XLA's gather and scatter).
    - `reason`: what runs and why, e.g. `"XLA's gather and scatter (ZOO_SPARSE_KERNELS=jax)"`.
    """

    path: Literal["native", "jax"]
    reason: str


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str]:
    """The library with its targets registered, or `None` and why it is not there."""
    if not LIBRARY.exists():
        return None, (
            f"the native kernels are not built ({LIBRARY.name} is missing: the package was "
            "installed without a C++ compiler, or with ZOO_BUILD_KERNELS=0)"
        )
    try:
        library = ctypes.CDLL(str(LIBRARY))
    except OSError as error:
        return None, f"the native kernels do not load: {error}"
    for target, symbol in _TARGETS.items():
        capsule = jax.ffi.pycapsule(getattr(library, symbol))
        jax.ffi.register_ffi_target(target, capsule, platform="cpu")
    return library, f"zoo's native CPU kernels ({LIBRARY})"


_XLA = "XLA's gather and scatter"


def _choice() -> str:
    choice = os.environ.get(VARIABLE, "auto").strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ValueError(
            f"the environment variable {VARIABLE} must be one of {', '.join(_CHOICES)}; got "
            f"{os.environ[VARIABLE]!r}. For example {VARIABLE}=jax for XLA's own gather and "
            "scatter."
        )
    return choice


def kernels() -> Kernels:
    """Which path `zoo.sparse`'s steps take now for their row gathers and updates, and why.

    On one CPU device, with the kernels built at install (they are, wherever a C++ compiler
    was found), the sparse steps gather the looked-up rows and update the table and the
    optimizer's per-row state in place with zoo's native kernels; on GPU and TPU, on several
    devices, or where they are not built, with XLA's gather and scatter. Both give the same
    results (see `docs/sparse.md`). The environment variable `ZOO_SPARSE_KERNELS` forces a
    path: `native`, `jax`, or `auto` (the default). It is read when a step is traced.

    **Returns:**

    A `Kernels(path, reason)`, e.g. `Kernels(path="native", reason="zoo's native CPU kernels
    (...)")`.

    **Raises:**

    `ValueError` when `ZOO_SPARSE_KERNELS` is none of `auto`, `native`, `jax`; `RuntimeError`
    when it is `native` and the kernels cannot run here.

    !!! example

        ```python
        print(zoo.sparse.kernels().path)  # "native" on CPU after `uv sync`
        ```
    """
    choice = _choice()
    if choice == "jax":
        return Kernels("jax", f"{_XLA} ({VARIABLE}=jax)")
    library, why = _load()
    backend, devices = jax.default_backend(), jax.device_count()
    if library is not None and backend == "cpu" and devices == 1:
        return Kernels("native", why)
    if library is not None and backend != "cpu":
        why = f"the default backend is {backend}; the native kernels are for CPU"
    elif library is not None:
        # XLA would have to gather a sharded table whole to pass it to a kernel.
        why = f"{devices} devices; the native kernels are for one CPU device"
    if choice == "native":
        raise RuntimeError(f"{VARIABLE}=native, but {why}. Unset it or set it to auto or jax.")
    return Kernels("jax", f"{_XLA}: {why}")


def native() -> bool:
    """Whether the step being traced gathers and stores rows with the native kernels."""
    return kernels().path == "native"


def native_for(dtype) -> bool:
    """Whether the step being traced adds into a table of `dtype` with the native kernels."""
    return native() and jnp.dtype(dtype) in ARITHMETIC_DTYPES


def fused_in_place(model) -> bool:
    """Whether an optimizer's fused kernel updates every table of `model` in this step."""
    return all(native_for(e.weight.dtype) for e in tables(model))


def _flat_ids(ids: Int[Array, "*ids"]) -> Int[Array, " n"]:
    return jnp.ravel(ids).astype(jnp.int32)


def gather_rows(table: Array, ids: Int[Array, "*ids"]) -> Array:
    """`table[ids]`, zeros where an id is out of range (as `mode="fill", fill_value=0`)."""
    flat = _flat_ids(ids)
    out = jax.ShapeDtypeStruct((flat.shape[0], *table.shape[1:]), table.dtype)
    rows = jax.ffi.ffi_call("zoo_gather_rows", out, vmap_method="sequential")(table, flat)
    return rows.reshape(*ids.shape, *table.shape[1:])


def _aliased(target: str, table: Array, *operands: Array) -> Array:
    call = jax.ffi.ffi_call(
        target,
        jax.ShapeDtypeStruct(table.shape, table.dtype),
        input_output_aliases={0: 0},
        vmap_method="sequential",
    )
    return call(table, *operands)


def scatter_rows(table: Array, ids: Int[Array, " n"], rows: Array) -> Array:
    """`table.at[ids].set(rows, mode="drop")`, in place in the table's buffer."""
    return _aliased("zoo_scatter_rows", table, _flat_ids(ids), rows.astype(table.dtype))


def scatter_add_rows(table: Array, ids: Int[Array, "*ids"], rows: Array, scale=None) -> Array:
    """`table.at[ids].add(rows, mode="drop")` in place, in the order of the ids, or
    `table.at[ids].add(scale * rows)` with a `scale`."""
    flat = _flat_ids(ids)
    rows = rows.astype(table.dtype).reshape(flat.shape[0], *table.shape[1:])
    if scale is None:
        return _aliased("zoo_scatter_add_rows", table, flat, rows, jnp.zeros((), table.dtype))
    scale = jnp.asarray(scale).astype(table.dtype)
    return _aliased("zoo_scatter_add_rows_scaled", table, flat, rows, scale)


def scatter_add_into_zeros(shape, ids: Int[Array, "*ids"], rows: Array, scale) -> Array:
    """`zeros(shape).at[ids].add(scale * rows, mode="drop")`, in the order of the ids."""
    flat = _flat_ids(ids)
    rows = rows.reshape(flat.shape[0], *shape[1:])
    scale = jnp.asarray(scale).astype(rows.dtype)
    out = jax.ShapeDtypeStruct(tuple(shape), rows.dtype)
    call = jax.ffi.ffi_call("zoo_scatter_add_into_zeros", out, vmap_method="sequential")
    return call(flat, rows, scale)


def sort_ids(ids: Int[Array, " n"]) -> Int[Array, " n"]:
    """`jnp.sort(ids)` of int32 ids (a radix sort: equal to XLA's, several times faster)."""
    out = jax.ShapeDtypeStruct(ids.shape, jnp.int32)
    return jax.ffi.ffi_call("zoo_sort_ids", out, vmap_method="sequential")(ids.astype(jnp.int32))


def sum_squares(x: Float[Array, "..."]) -> Float[Array, ""]:
    """`jnp.sum(jnp.square(x))` of a float32 array, in one pass over it."""
    out = jax.ShapeDtypeStruct((), jnp.float32)
    return jax.ffi.ffi_call("zoo_sum_squares", out, vmap_method="sequential")(x)


def _fused(target: str, table: Array, state: Array, *operands: Array) -> tuple[Array, Array]:
    shapes = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (table, state)]
    call = jax.ffi.ffi_call(
        target, shapes, input_output_aliases={0: 0, 1: 1}, vmap_method="sequential"
    )
    return tuple(call(table, state, *operands))


def rowwise_adagrad(
    table: Float[Array, "rows dim"],
    sums: Float[Array, " rows"],
    ids: Int[Array, " n"],
    grads: Float[Array, "n dim"],
    learning_rate,
    eps: float,
) -> tuple[Array, Array]:
    """Row-wise Adagrad on coalesced rows, table and accumulators updated in place; each
    row's mean square is summed in the kernel."""
    dtype = table.dtype
    neg_lr = -jnp.asarray(learning_rate).astype(dtype)
    return _fused(
        "zoo_rowwise_adagrad",
        table,
        sums.astype(dtype),
        _flat_ids(ids),
        grads.astype(dtype),
        neg_lr,
        jnp.asarray(eps, dtype),
    )


def lazy_adam(
    table: Float[Array, "rows dim"],
    moments: Array,
    ids: Int[Array, " n"],
    grads: Float[Array, "n dim"],
    step_size,
    b1: float,
    b2: float,
    eps: float,
) -> tuple[Array, Array]:
    """Lazy Adam on coalesced rows, table and moments (`m + 1j v`) updated in place."""
    dtype = table.dtype
    # Rounded from double as JAX rounds `1 - b1` of Python floats.
    hyper = jnp.asarray(np.array([b1, 1 - b1, b2, 1 - b2, eps]), dtype)
    neg_step = -jnp.asarray(step_size).astype(dtype)
    return _fused(
        "zoo_lazy_adam", table, moments, _flat_ids(ids), grads.astype(dtype), neg_step, hyper
    )
