"""Mixed precision: float32 parameters and optimizer state, a lower-precision forward and backward.

The policy is applied to the loss: at its start the model's floating leaves and the batch's
floating arrays are cast to the compute dtype, and the loss is cast back to float32. The cast is
differentiable, so gradients arrive in float32, the dtype of the parameters, and the optimizer
never sees anything else.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import LossFn

PRECISIONS = {"float32": None, "bfloat16": jnp.bfloat16}


def check_precision(precision) -> None:
    if precision in PRECISIONS:
        return
    known = ", ".join(repr(name) for name in PRECISIONS)
    hint = (
        " float16 needs loss scaling, which zoo does not do yet; bfloat16 has float32's range "
        "and needs none."
        if precision == "float16"
        else ""
    )
    raise ValueError(
        f"precision must be one of {known}; got {precision!r}.{hint} For example "
        "zoo.train(..., precision='bfloat16')."
    )


def cast_floating(tree, dtype):
    """`tree` with every floating array cast to `dtype` (integer arrays, such as ids, kept)."""

    def cast(leaf):
        return leaf.astype(dtype) if eqx.is_inexact_array(leaf) else leaf

    return jax.tree.map(cast, tree)


def with_precision(loss_fn: LossFn, precision: str) -> LossFn:
    """`loss_fn` computing in `precision`; the identity for float32."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return loss_fn

    @functools.wraps(loss_fn)
    def loss(model, batch, key=None):
        value = loss_fn(cast_floating(model, dtype), cast_floating(batch, dtype), key)
        return value.astype(jnp.float32)

    return loss
