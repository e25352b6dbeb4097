"""The training state: one pytree holding everything that training changes."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Int, PRNGKeyArray

from .._custom_types import PyTree

# Streams of randomness derived from the one training key, so each is a pure function of
# (key, counter) and a resumed run draws exactly what an uninterrupted one would.
_SHUFFLE_STREAM = 0
_STEP_STREAM = 1
_VALIDATION_STREAM = 2
_EVALUATION_STREAM = 3


class TrainState(eqx.Module):
    """Everything training changes, as one pytree: save it to resume bit for bit.

    **Fields:**

    - `model`: the model being trained.
    - `opt_state`: the optimizer's state.
    - `step`: the number of optimizer steps taken.
    - `epoch`: the number of epochs completed.
    - `batch`: the number of batches of the current epoch already taken (its data-order position).
    - `key`: the training key; the shuffle of epoch `e` and the key of step `s` derive from it.
    """

    model: eqx.Module
    opt_state: PyTree
    step: Int[Array, ""]
    epoch: Int[Array, ""]
    batch: Int[Array, ""]
    key: PRNGKeyArray

    def step_key(self) -> PRNGKeyArray:
        """The key this step's loss receives (for dropout and other sampling)."""
        return jax.random.fold_in(jax.random.fold_in(self.key, _STEP_STREAM), self.step)

    def epoch_order(self, num_examples: int) -> Int[Array, " num_examples"]:
        """The order in which this epoch visits the examples: a permutation drawn by key."""
        shuffle_key = jax.random.fold_in(jax.random.fold_in(self.key, _SHUFFLE_STREAM), self.epoch)
        return jax.random.permutation(shuffle_key, num_examples)


def validation_key(key: PRNGKeyArray) -> PRNGKeyArray:
    """The key that draws the rows `validation_split` holds out, from the training key."""
    return jax.random.fold_in(key, _VALIDATION_STREAM)


def initial_state(model: eqx.Module, opt_state: PyTree, key: PRNGKeyArray) -> TrainState:
    """The state before the first step."""
    # Distinct buffers for each counter: the state is donated, and a buffer may be donated once.
    step, epoch, batch = (jnp.zeros((), jnp.int32) for _ in range(3))
    return TrainState(model, opt_state, step=step, epoch=epoch, batch=batch, key=key)


def evaluation_key(key: PRNGKeyArray) -> PRNGKeyArray:
    """The key a user's loss gets when `zoo.train` evaluates it on the eval data: fixed, so
    each epoch's figure is comparable."""
    return jax.random.fold_in(key, _EVALUATION_STREAM)
