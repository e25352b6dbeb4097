"""Mixed precision: float32 parameters and optimizer state, a lower-precision forward and backward.

The policy is applied to the loss: at its start the model's floating leaves and the batch's
floating arrays are cast to the compute dtype, and the loss is cast back to float32. The cast is
differentiable, so gradients arrive in float32, the dtype of the parameters, and the optimizer
never sees anything else.

float16's narrow range would flush small gradients to zero, so it gets dynamic loss scaling:
the step differentiates `loss * scale` and divides the gradients by `scale`; the scale lives in
the optimizer state (`LossScaleState`), so it is saved and resumed with everything else. A step
whose scaled gradients overflow is skipped and halves the scale; `growth_interval` finite steps
in a row double it.
"""

import functools
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int

from .._custom_types import LossFn, PyTree

PRECISIONS = {"float32": None, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_INITIAL_LOSS_SCALE = 2.0**15
_GROWTH_INTERVAL = 2000


def check_precision(precision) -> None:
    if precision in PRECISIONS:
        return
    known = ", ".join(repr(name) for name in PRECISIONS)
    raise ValueError(
        f"precision must be one of {known}; got {precision!r}. For example "
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


class LossScaleState(NamedTuple):
    """The state of dynamic loss scaling, around the optimizer's own."""

    scale: Float[Array, ""]
    finite_steps: Int[Array, ""]  # finite steps since the scale last changed
    overflows: Int[Array, ""]  # steps skipped because the scaled gradients overflowed
    inner: PyTree


def dynamic_loss_scaling(
    optimizer: optax.GradientTransformation,
    initial_scale: float = _INITIAL_LOSS_SCALE,
    growth_interval: int = _GROWTH_INTERVAL,
) -> optax.GradientTransformation:
    """`optimizer`, skipping steps whose (unscaled) gradients are not finite.

    On such a step the updates are zero, `optimizer`'s state stays as it was and the scale
    halves (down to 1); after `growth_interval` finite steps in a row it doubles.
    """

    def init(params):
        return LossScaleState(
            jnp.asarray(initial_scale, jnp.float32),
            jnp.zeros((), jnp.int32),
            jnp.zeros((), jnp.int32),
            optimizer.init(params),
        )

    def update(grads, state: LossScaleState, params=None):
        finite = all_finite(grads)
        updates, inner = optimizer.update(grads, state.inner, params)
        updates = jax.tree.map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), updates)
        inner = jax.tree.map(lambda new, old: jnp.where(finite, new, old), inner, state.inner)
        finite_steps = jnp.where(finite, state.finite_steps + 1, 0)
        grow = finite_steps >= growth_interval
        scale = jnp.where(
            finite,
            jnp.where(grow, state.scale * 2, state.scale),
            jnp.maximum(state.scale / 2, 1.0),
        )
        finite_steps = jnp.where(grow, 0, finite_steps)
        overflows = state.overflows + (~finite).astype(jnp.int32)
        return updates, LossScaleState(scale, finite_steps, overflows, inner)

    return optax.GradientTransformation(init, update)


def all_finite(tree) -> Array:
    leaves = jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def loss_scale(opt_state: PyTree) -> Array | None:
    """The current loss scale, when the optimizer does dynamic loss scaling (else None)."""
    return opt_state.scale if isinstance(opt_state, LossScaleState) else None


def scaled_value_and_grad(value_and_grad, loss_fn: LossFn, scale: Array | None):
    """`value_and_grad(loss_fn)`, differentiating `loss * scale` and unscaling what it returns.

    With `scale=None` (no loss scaling), `value_and_grad(loss_fn)` itself.
    """
    if scale is None:
        return value_and_grad(loss_fn)

    def scaled_loss(model, batch, key):
        return loss_fn(model, batch, key) * scale

    def unscaled(model, batch, key):
        loss, grads = value_and_grad(scaled_loss)(model, batch, key)
        return loss / scale, jax.tree.map(lambda g: g / scale, grads)

    return unscaled
