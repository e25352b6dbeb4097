"""Gradient accumulation: one optimizer step from `k` micro-batches, one at a time in memory.

The step's batch is cut into `k` equal micro-batches; a `lax.scan` takes the loss and gradient
of each, weighs them by the micro-batch's count of loss terms, and the step uses the weighted
means: for a loss that is a mean over its terms, that is the loss and gradient of the whole
batch, to float rounding. A loss counts its terms with `count_terms(model, batch)` (a mean over
the real positions of uneven sequences, say); without one, its terms are the examples. A loss
whose terms reach across the batch (`negatives_from_batch`: in-batch softmax) is not a sum over
micro-batches at all, and is refused.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from .. import _checks
from ._rules import DENSE, UpdateRule


def check_accumulate(accumulate, batch_size: int, rule: UpdateRule, loss) -> int:
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
    if accumulate > 1 and getattr(loss, "negatives_from_batch", False):
        raise ValueError(
            f"accumulate={accumulate} cannot give this loss's step: it draws each example's "
            "negatives from the other examples of its batch (negatives_from_batch), so "
            "micro-batches would see fewer negatives than the batch. Use accumulate=1 with the "
            "batch_size that fits, or a loss with sampled negatives."
        )
    return accumulate


def count_terms(loss):
    """`terms(model, batch) -> count` of the loss's terms in a batch: its `count_terms`, or
    the number of examples."""
    counter = getattr(loss, "count_terms", None)
    if counter is not None:
        return counter
    return lambda model, batch: jnp.asarray(jax.tree.leaves(batch)[0].shape[0], jnp.float32)


def accumulating(rule: UpdateRule, accumulate: int, terms) -> UpdateRule:
    """`rule` whose `value_and_grad` takes `accumulate` micro-batches per step, weighted by
    their count of loss terms (`terms(model, batch)`)."""
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
                loss_sum, grad_sum, count = carry
                micro_key = None if key is None else jax.random.fold_in(key, index)
                loss, grads = single(model, micro_batch, micro_key)
                weight = jnp.asarray(terms(model, micro_batch), jnp.float32)
                grad_sum = jax.tree.map(lambda s, g: s + weight * g, grad_sum, grads)
                return (
                    loss_sum + weight * loss.astype(jnp.float32),
                    grad_sum,
                    count + weight,
                ), None

            zero = jnp.zeros((), jnp.float32)
            indices = jnp.arange(accumulate)
            (loss_sum, grad_sum, count), _ = lax.scan(add, (zero, zeros, zero), (indices, micro))
            count = jnp.maximum(count, 1.0)  # no terms at all: a zero step, as the whole batch's
            grads = jax.tree.map(lambda g: (g / count).astype(g.dtype), grad_sum)
            return loss_sum / count, grads

        return accumulated

    return rule._replace(value_and_grad=value_and_grad)
