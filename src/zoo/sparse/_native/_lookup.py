"""`in_place_rows`: the in-place SGD path's lookup, on the native kernels.

A JAX primitive `zoo_in_place_rows(table, ids, scale)`: forward, the rows `table[ids]` (the
native gather); backward, `scale * cotangent` added into the looked-up rows of the table, the
same contract as `_in_place._scale_cotangent` around XLA's gather. Its transpose is a "fancy"
one, as JAX's own gather has: it receives the table's gradient accumulator, and when
`with_refs` has bound that to the table's `jax.Ref` it runs the native scatter-add on the ref's
buffer in place (`ref[...] = scatter_add(ref[...], ...)`, the output aliased to the input);
given a value accumulator (a plain `jax.vjp`) it scatters into zeros. Under `jax.vmap` a lookup
of one id per example becomes one lookup of the whole batch, so a step makes one gather and one
scatter-add per lookup site, as XLA's batched gather does.

JAX has no public interface for a transpose that receives accumulators yet, so this module uses
`jax._src.interpreters.ad` (`fancy_transposes`, `RefAccum`, `ValAccum`, `NullAccum`):
`tests/test_sparse_native.py` pins that the table's buffer is updated in place through it.
"""

import jax
import jax.numpy as jnp
from jax._src.interpreters import ad as ad_internal
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir
from jaxtyping import Array, Float, Int

from . import gather_rows, scatter_add_into_zeros, scatter_add_rows

in_place_rows_p = Primitive("zoo_in_place_rows")


def in_place_rows(
    table: Float[Array, "rows dim"], ids: Int[Array, "*ids"], scale: Float[Array, ""]
) -> Float[Array, "*ids dim"]:
    """`table[ids]`, sending `scale * cotangent` back into the table's rows."""
    return in_place_rows_p.bind(table, ids.astype(jnp.int32), jnp.asarray(scale, jnp.float32))


def _abstract_eval(table, ids, scale):
    del scale
    return jax.core.ShapedArray((*ids.shape, *table.shape[1:]), table.dtype)


def _jvp(primals, tangents):
    table, ids, scale = primals
    out = in_place_rows_p.bind(table, ids, scale)
    table_dot = tangents[0]
    if type(table_dot) is ad.Zero:
        return out, ad.Zero.from_primal_value(out)
    return out, in_place_rows_p.bind(ad.instantiate_zeros(table_dot), ids, scale)


def _transpose(cotangent, table, ids, scale):
    """Adds `scale * cotangent` into the rows of `table`'s accumulator."""
    if type(cotangent) is ad.Zero or isinstance(table, ad_internal.NullAccum):
        return
    if isinstance(table, ad_internal.RefAccum):
        ref = table.inst().ref
        ref[...] = scatter_add_rows(ref[...], ids, cotangent, scale)
    else:
        table.accum(scatter_add_into_zeros(table.aval.shape, ids, cotangent, scale))


def _batch(args, dims):
    table, ids, scale = args
    table_dim, ids_dim, scale_dim = dims
    if table_dim is None and scale_dim is None:
        # One id per example (or any ids per example): one lookup of all of them.
        return in_place_rows_p.bind(table, ids, scale), ids_dim
    # A batched table or scale (not a sparse-step lookup): one lookup per example.
    out = jax.lax.map(lambda a: in_place_rows_p.bind(*a), _moved(args, dims))
    return out, 0


def _moved(args, dims):
    size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
    return tuple(
        jnp.broadcast_to(a, (size, *a.shape)) if d is None else jnp.moveaxis(a, d, 0)
        for a, d in zip(args, dims, strict=True)
    )


in_place_rows_p.def_impl(lambda table, ids, scale: gather_rows(table, ids))  # outside jit
in_place_rows_p.def_abstract_eval(_abstract_eval)
ad.primitive_jvps[in_place_rows_p] = _jvp
ad_internal.fancy_transposes[in_place_rows_p] = _transpose
batching.primitive_batchers[in_place_rows_p] = _batch
mlir.register_lowering(
    in_place_rows_p,
    mlir.lower_fun(lambda table, ids, scale: gather_rows(table, ids), multiple_results=False),
    platform="cpu",
)
