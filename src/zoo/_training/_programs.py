"""The compiled programs of training: one step, and a run of steps fused into one program.

Both are built from the same `train_step`, so the fused path and the step-by-step path compute the
same thing. The static part of the training state (the model's structure and hyperparameters) is
split off once, and only the arrays cross the jit boundary: no pytree filtering per call.
"""

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, Int

from .._custom_types import Batch, LossFn, Optimizer
from ._data import gather
from ._precision import loss_scale, scaled_value_and_grad
from ._rules import UpdateRule, fused_update
from ._state import TrainState


class StepTotals(NamedTuple):
    """Sums over the steps of a run, kept on device until the run ends."""

    loss: Float[Array, ""]  # sum over steps of (batch loss x batch size)
    grad_norm: Float[Array, ""]  # sum over steps of the global gradient norm
    examples: Int[Array, ""]
    steps: Int[Array, ""]
    first_nonfinite_step: Int[Array, ""]  # the first step whose loss was not finite, or -1
    nonfinite_steps: Int[Array, ""]  # steps whose loss or gradient was not finite

    @classmethod
    def zeros(cls) -> "StepTotals":
        # Distinct buffers for each field: the totals are donated, and a buffer may be donated once.
        return cls(
            loss=jnp.zeros((), jnp.float32),
            grad_norm=jnp.zeros((), jnp.float32),
            examples=jnp.zeros((), jnp.int32),
            steps=jnp.zeros((), jnp.int32),
            first_nonfinite_step=jnp.full((), -1, jnp.int32),
            nonfinite_steps=jnp.zeros((), jnp.int32),
        )

    def add(self, step: Array, loss: Array, grad_norm: Array, batch_size: int) -> "StepTotals":
        """Adds one step; a non-finite step is counted, and left out of the sums."""
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        first_bad = jnp.where(
            (self.first_nonfinite_step < 0) & ~finite, step, self.first_nonfinite_step
        )
        weight = finite.astype(jnp.float32)
        return StepTotals(
            self.loss + jnp.where(finite, loss.astype(jnp.float32), 0.0) * batch_size,
            self.grad_norm + jnp.where(finite, grad_norm.astype(jnp.float32), 0.0),
            self.examples + batch_size * finite.astype(jnp.int32),
            self.steps + finite.astype(jnp.int32),
            first_bad,
            self.nonfinite_steps + (1 - weight).astype(jnp.int32),
        )


def make_train_step(
    loss_fn: LossFn, optimizer: Optimizer, rule: UpdateRule, *, skip_nonfinite: bool = False
) -> Callable[[TrainState, Batch], tuple[TrainState, Array, Array]]:
    """`train_step(state, batch) -> (state, loss, grad_norm)`: one optimizer step.

    With `skip_nonfinite`, a step whose loss or gradient is not finite leaves the model and the
    optimizer state as they were (the step counter still advances, so keys stay in sequence).
    """

    def update(operands):
        model, opt_state, grads = operands
        # optax mixes Python floats with int32 step counts (e.g. Adam's bias correction), which
        # jax_numpy_dtype_promotion="strict" rejects: let the optimizer promote as optax expects.
        with jax.numpy_dtype_promotion("standard"):
            if fused_update(optimizer, rule, model):  # zoo's native kernels, in one pass
                return optimizer.apply_in_place(grads, opt_state, model)
            updates, opt_state = optimizer.update(grads, opt_state, rule.params(model))
        return rule.apply_updates(model, updates), opt_state

    def keep(operands):
        model, opt_state, _ = operands
        return model, opt_state

    def train_step(state: TrainState, batch: Batch):
        state, loss, grad_norm = step(state, batch)
        learning_rate = injected_learning_rate(state.opt_state)
        if learning_rate is not None:
            # A float learning rate is checked before training; a schedule's values only here.
            loss = eqx.error_if(
                loss, ~(learning_rate >= 0) | ~jnp.isfinite(learning_rate), SCHEDULE_ERROR
            )
        return state, loss, grad_norm

    def step(state: TrainState, batch: Batch):
        scale = loss_scale(state.opt_state)  # None unless float16's dynamic loss scaling
        value_and_grad = scaled_value_and_grad(rule.value_and_grad, loss_fn, scale)
        gradients = rule.gradients(value_and_grad, loss_fn, optimizer)
        loss, grads, model = gradients(state.model, state.opt_state, batch, state.step_key())
        grad_norm = rule.grad_norm(grads)
        if scale is not None:
            # Overflowing gradients are the loss scaler's to handle: it skips the update and
            # lowers the scale. Only a non-finite loss is a failure.
            grad_norm = jnp.where(jnp.isfinite(grad_norm), grad_norm, 0.0)
        operands = (model, state.opt_state, grads)
        if skip_nonfinite:
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            model, opt_state = lax.cond(finite, update, keep, operands)
        else:
            model, opt_state = update(operands)
        state = eqx.tree_at(
            lambda s: (s.model, s.opt_state, s.step, s.batch),
            state,
            (model, opt_state, state.step + 1, state.batch + 1),
        )
        return state, loss, grad_norm

    return train_step


SCHEDULE_ERROR = (
    "learning_rate: the optimizer's learning-rate schedule returned a negative or non-finite "
    "value at this step; a schedule must return finite values >= 0, e.g. "
    "optax.linear_schedule(1e-3, 1e-5, transition_steps=1000)."
)


def injected_learning_rate(opt_state) -> Array | None:
    """The learning rate of an optimizer wrapped in `optax.inject_hyperparams` (the one its
    last update used), else None."""
    states = jax.tree.leaves(opt_state, is_leaf=_has_hyperparams)
    for state in filter(_has_hyperparams, states):
        if "learning_rate" in state.hyperparams:
            return state.hyperparams["learning_rate"]
    return None


def _has_hyperparams(node) -> bool:
    return isinstance(getattr(node, "hyperparams", None), dict)


class Programs:
    """The compiled entry points of one training run, built once from its static structure."""

    def __init__(self, train_step, static: TrainState, batch_size: int):
        self._static = static
        self._batch_size = batch_size

        def run_steps(dynamic, totals, data, order, num_steps):
            # The loop carries the state's arrays only: a Python float in the model (the rate
            # of an `eqx.nn.Dropout`, say) would become a traced array there, and then a leaf
            # that gets a gradient and no optimizer state.
            def body(_, carry):
                dynamic, totals = carry
                state = eqx.combine(dynamic, static)
                start = state.batch * batch_size
                indices = lax.dynamic_slice_in_dim(order, start, batch_size)
                step = state.step
                state, loss, grad_norm = train_step(state, gather(data, indices))
                totals = totals.add(step, loss, grad_norm, batch_size)
                return eqx.filter(state, eqx.is_array), totals

            return lax.fori_loop(0, num_steps, body, (dynamic, totals))

        def one_step(dynamic, totals, batch):
            state = eqx.combine(dynamic, static)
            step = state.step
            state, loss, grad_norm = train_step(state, batch)
            size = jax.tree.leaves(batch)[0].shape[0]
            return eqx.filter(state, eqx.is_array), totals.add(step, loss, grad_norm, size)

        def epoch_order(dynamic, num_examples):
            return eqx.combine(dynamic, static).epoch_order(num_examples)

        # The state is donated (updated in place); the few-byte totals are not, so a chunk's
        # totals can still be read after the next chunk has been dispatched.
        self.run_steps = jax.jit(run_steps, donate_argnums=0)
        self.one_step = jax.jit(one_step, donate_argnums=0)
        self.epoch_order = jax.jit(epoch_order, static_argnums=1)

    def combine(self, dynamic) -> TrainState:
        return eqx.combine(dynamic, self._static)

    def model_of(self, arrays) -> eqx.Module:
        """The model whose arrays are `arrays` (a copy of `dynamic.model`)."""
        return eqx.combine(arrays, self._static.model)
