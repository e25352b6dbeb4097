"""Gradient accumulation: one optimizer step from `k` micro-batches, one at a time in memory.

The step's batch is cut into `k` equal micro-batches; a `lax.scan` takes the loss and gradient
of each and sums them, and the step uses their means: for a loss that is a mean over the batch's
examples, that is the loss and gradient of the whole batch, to float rounding.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from .. import _checks
from ._rules import DENSE, UpdateRule


def check_accumulate(accumulate, batch_size: int, rule: UpdateRule) -> int:
    """Eager checks: a positive int that divides `batch_size`, with a dense optimizer; returns
    it as a Python int."""
    accumulate = _checks.positive_int(
        "accumulate", accumulate, example="zoo.train(..., batch_size=256, accumulate=4)"
    )
    if batch_size % accumulate:
        divisors = [k for k in range(1, accumulate * 2 + 1) if batch_size % k == 0]
        raise ValueError(
            f"accumulate={accumulate} must divide batch_size={batch_size} into equal "
            f"micro-batches; divisors of {batch_size} nearby: {divisors}. For example "
            f"batch_size={batch_size - batch_size % accumulate + accumulate}, "
            f"accumulate={accumulate}."
        )
    if accumulate > 1 and rule is not DENSE:
        raise ValueError(
            "accumulate > 1 does not work with zoo.sparse optimizers yet (their gradients are "
            "coalesced rows of one batch); use a larger batch_size instead, or an optax optimizer."
        )
    return accumulate


def accumulating(rule: UpdateRule, accumulate: int) -> UpdateRule:
    """`rule` whose `value_and_grad` averages over `accumulate` micro-batches per step."""
    if accumulate == 1:
        return rule

    def value_and_grad(loss_fn):
        single = rule.value_and_grad(loss_fn)

        def accumulated(model, batch, key):
            size = jax.tree.leaves(batch)[0].shape[0]
            if size % accumulate:
                # The epoch's last, smaller batch: already small, so taken whole.
                return single(model, batch, key)
            micro = jax.tree.map(
                lambda a: a.reshape(accumulate, size // accumulate, *a.shape[1:]), batch
            )
            zeros = jax.tree.map(jnp.zeros_like, eqx.filter(model, eqx.is_inexact_array))

            def add(carry, inputs):
                index, micro_batch = inputs
                loss_sum, grad_sum = carry
                micro_key = None if key is None else jax.random.fold_in(key, index)
                loss, grads = single(model, micro_batch, micro_key)
                grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
                return (loss_sum + loss.astype(jnp.float32), grad_sum), None

            start = (jnp.zeros((), jnp.float32), zeros)
            indices = jnp.arange(accumulate)
            (loss_sum, grad_sum), _ = lax.scan(add, start, (indices, micro))
            return loss_sum / accumulate, jax.tree.map(lambda g: g / accumulate, grad_sum)

        return accumulated

    return rule._replace(value_and_grad=value_and_grad)
