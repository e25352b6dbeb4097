"""The compiled step: the state it changes, how it turns a loss into an update, and the programs
that run it.

In the order of this file: `TrainState`, the one pytree holding everything that training
changes, and the streams of randomness drawn from the training key; `UpdateRule`, how a step
turns a loss into an update (the dense optax rule, or a sparse-embedding rule); mixed
precision; gradient accumulation; `make_train_step`, `StepTotals` and `Programs`, one step and
a run of steps fused into one program; and per-example gradients. Nothing here knows of
epochs, callbacks or files.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax import lax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .. import _checks, sparse
from .._custom_types import Batch, LossFn, Optimizer, PyTree
from .._io._rebuild import record_name
from ..losses._losses import resolve_loss
from ..sparse import (
    _in_place as sparse_in_place,
    _lookups as sparse_lookups,
    _native as sparse_native,
)
from ._data import gather

# Streams of randomness derived from the one training key, so each is a pure function of
# (key, counter) and a resumed run draws exactly what an uninterrupted one would.
_SHUFFLE_STREAM = 0
_STEP_STREAM = 1
_VALIDATION_STREAM = 2
_EVALUATION_STREAM = 3


@record_name("zoo.TrainState")  # what checkpoints have always recorded
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


# How a step turns a loss into an update: the dense optax rule, or a sparse-embedding rule.


class UpdateRule(NamedTuple):
    """The functions a training step needs from its optimizer family.

    - `value_and_grad(loss_fn)(model, batch, key) -> (loss, grads)`
    - `params(model)`: what the optimizer's `update(grads, state, params)` receives.
    - `apply_updates(model, updates) -> model`
    - `grad_norm(grads) -> scalar`: the global norm of the gradients.
    - `checked(model)`: the arrays whose finiteness is checked after each chunk of steps.
    - `in_place`: the tables' update is added into them during the backward pass (see
        `gradients`), for an optimizer with an `in_place_scale` (`zoo.sparse.sgd`).
    """

    value_and_grad: Callable[[Callable], Callable]
    params: Callable[[eqx.Module], Any]
    apply_updates: Callable[[eqx.Module, Any], eqx.Module]
    grad_norm: Callable[[Any], Any]
    checked: Callable[[eqx.Module], Any]
    in_place: bool = False

    def gradients(self, value_and_grad: Callable, loss_fn: Callable, optimizer) -> Callable:
        """`f(model, opt_state, batch, key) -> (loss, grads, model)`.

        `value_and_grad` is `self.value_and_grad(loss_fn)`, possibly wrapped (loss scaling,
        accumulation). With `in_place`, the returned model has the tables' update already
        added and `grads` holds the other parameters' gradients; otherwise the model is the
        one given.
        """
        if self.in_place:

            def in_place(model, opt_state, batch, key):
                scale = optimizer.in_place_scale(opt_state)
                return sparse_in_place.value_and_grad_in_place(loss_fn)(model, scale, batch, key)

            return in_place

        def unchanged(model, opt_state, batch, key):
            del opt_state
            loss, grads = value_and_grad(model, batch, key)
            return loss, grads, model

        return unchanged


def global_norm(grads) -> Any:
    """The norm of all floating arrays of `grads` (a `SparseRows` counts by its values).

    Every step computes it (for `history["train"]["grad_norm"]` and to catch a non-finite
    gradient). On one CPU device zoo's native kernel reads each float32 gradient once; XLA's
    square-then-reduce took a second pass that made a small model's step about 12% slower.
    """
    leaves = jax.tree.leaves(eqx.filter(grads, eqx.is_inexact_array))
    if leaves and all(leaf.dtype == jnp.float32 for leaf in leaves) and sparse_native.native():
        return jnp.sqrt(sum(sparse_native.sum_squares(leaf) for leaf in leaves))
    return optax.tree.norm(leaves)


def floating(model: eqx.Module) -> Any:
    """The floating arrays of `model`: what the dense rule trains and checks."""
    return eqx.filter(model, eqx.is_inexact_array)


DENSE = UpdateRule(
    value_and_grad=eqx.filter_value_and_grad,
    # The optimizer sees what is differentiated: floating arrays. Integer arrays in a model
    # (lookup tables, counts) get no gradient, and optax would turn their state leaves into None
    # after the first update, changing the state's structure between steps.
    params=floating,
    apply_updates=eqx.apply_updates,
    grad_norm=global_norm,
    checked=floating,
)


# Sparse-embedding optimizers see the whole model and take gradients whose tables are
# `SparseRows` (only the looked-up rows), so a step costs O(batch) rather than O(table).
SPARSE = UpdateRule(
    value_and_grad=sparse.value_and_grad,
    params=lambda model: model,
    apply_updates=sparse.apply_updates,
    grad_norm=global_norm,
    # Not the tables: a step changes only their looked-up rows, and reading every row after
    # each chunk would be the O(table) work the sparse path avoids. A non-finite row shows
    # in the loss of the next step that looks it up.
    checked=lambda model: sparse_lookups.split_params(model)[1],
)

# Tables whose optimizer is linear in the gradient (`zoo.sparse.sgd`) receive their update in
# their own `jax.Ref` during the backward pass. Their gradients are never materialised, so the
# recorded gradient norm covers the other parameters.
IN_PLACE = SPARSE._replace(in_place=True)


def fused_update(optimizer, rule: UpdateRule, model) -> bool:
    """Whether `optimizer` updates the tables and its state in one native pass (row-wise Adagrad
    and lazy Adam on CPU), instead of `update` followed by `apply_updates`."""
    fused = getattr(optimizer, "apply_in_place", None)
    return rule is SPARSE and fused is not None and sparse_native.fused_in_place(model)


def rule_for(optimizer, *, in_place: bool = True) -> UpdateRule:
    """The update rule matching `optimizer`: a sparse one for `zoo.sparse` optimizers, in place
    where the optimizer allows it and the run allows it (`in_place`: no non-finite step to undo,
    no mesh to route the tables' ids over)."""
    if not isinstance(optimizer, sparse.SparseGradientTransformation):
        return DENSE
    if optimizer.in_place_scale is None or not in_place:
        return SPARSE
    return IN_PLACE


# Mixed precision: float32 parameters and optimizer state, a lower-precision forward and backward.
#
# The policy is applied to the loss: at its start the model's floating leaves and the batch's
# floating arrays are cast to the compute dtype, and the loss is cast back to float32. The cast is
# differentiable, so gradients arrive in float32, the dtype of the parameters, and the optimizer
# never sees anything else.
#
# float16's narrow range would flush small gradients to zero, so it gets dynamic loss scaling:
# the step differentiates `loss * scale` and divides the gradients by `scale`; the scale lives in
# the optimizer state (`LossScaleState`), so it is saved and resumed with everything else. A step
# whose scaled gradients overflow is skipped and halves the scale; `growth_interval` finite steps
# in a row double it.


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


def finite_at_start(rule: UpdateRule, model: eqx.Module) -> Callable[[eqx.Module], list]:
    """`rule.checked`, narrowed to the arrays that are finite in `model`, the model training
    starts from: an array that holds inf or nan by design (a mask of -inf, say) is not a
    failure, and the others are checked for what training does to them."""

    @jax.jit
    def finite(arrays):
        return [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(arrays)]

    kept = [bool(flag) for flag in finite(rule.checked(model))]

    def checked(model: eqx.Module) -> list:
        leaves = jax.tree.leaves(rule.checked(model))
        return [leaf for leaf, keep in zip(leaves, kept, strict=True) if keep]

    return checked


def all_finite(tree) -> Array:
    leaves = jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))
    # No arrays (a model of tables alone, on the sparse path, checks none): nothing is bad.
    return jnp.all(jnp.stack([jnp.asarray(True), *(jnp.all(jnp.isfinite(x)) for x in leaves)]))


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


# Gradient accumulation: one optimizer step from `k` micro-batches, one at a time in memory.
#
# The step's batch is cut into `k` equal micro-batches; a `lax.scan` takes the loss and gradient
# of each, weighs them by the micro-batch's count of loss terms, and the step uses the weighted
# means: for a loss that is a mean over its terms, that is the loss and gradient of the whole
# batch, to float rounding. A loss counts its terms with `count_terms(model, batch)` (a mean over
# the real positions of uneven sequences, say); without one, its terms are the examples. A loss
# whose terms reach across the batch (`negatives_from_batch`: in-batch softmax) is not a sum over
# micro-batches at all, and is refused.


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


# The compiled programs of training: one step, and a run of steps fused into one program.
#
# Both are built from the same `train_step`, so the fused path and the step-by-step path compute the
# same thing. The static part of the training state (the model's structure and hyperparameters) is
# split off once, and only the arrays cross the jit boundary: no pytree filtering per call.


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

    def check_model(self, last_step: Array, arrays) -> "StepTotals":
        """Marks `last_step` non-finite when `arrays` (the model's, `UpdateRule.checked`) are
        not all finite and no step was yet. A non-finite gradient with a finite loss (with the
        gradients' norm not computed) shows in the next step's loss, or, after a chunk's last
        step, here."""
        bad = ~all_finite(arrays) & (last_step >= 0)
        first = self.first_nonfinite_step
        return self._replace(
            first_nonfinite_step=jnp.where(bad & (first < 0), last_step, first),
            nonfinite_steps=self.nonfinite_steps + (bad & (first < 0)).astype(jnp.int32),
        )


def make_train_step(
    loss_fn: LossFn,
    optimizer: Optimizer,
    rule: UpdateRule,
    *,
    skip_nonfinite: bool = False,
    grad_norm: bool = False,
) -> Callable[[TrainState, Batch], tuple[TrainState, Array, Array]]:
    """`train_step(state, batch) -> (state, loss, grad_norm)`: one optimizer step.

    With `skip_nonfinite`, a step whose loss or gradient is not finite leaves the model and the
    optimizer state as they were (the step counter still advances, so keys stay in sequence).
    The gradients' norm is computed with `grad_norm` or `skip_nonfinite` (which needs to know
    whether it is finite), and is 0 otherwise: it costs a pass over the gradients.
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
        state, loss, norm = step(state, batch)
        learning_rate = injected_learning_rate(state.opt_state)
        if learning_rate is not None:
            # A float learning rate is checked before training; a schedule's values only here.
            loss = eqx.error_if(
                loss, ~(learning_rate >= 0) | ~jnp.isfinite(learning_rate), SCHEDULE_ERROR
            )
        return state, loss, norm

    def step(state: TrainState, batch: Batch):
        scale = loss_scale(state.opt_state)  # None unless float16's dynamic loss scaling
        value_and_grad = scaled_value_and_grad(rule.value_and_grad, loss_fn, scale)
        gradients = rule.gradients(value_and_grad, loss_fn, optimizer)
        loss, grads, model = gradients(state.model, state.opt_state, batch, state.step_key())
        if not (grad_norm or skip_nonfinite):
            norm = jnp.zeros((), jnp.float32)
        else:
            norm = rule.grad_norm(grads)
        if scale is not None:
            # Overflowing gradients are the loss scaler's to handle: it skips the update and
            # lowers the scale. Only a non-finite loss is a failure.
            norm = jnp.where(jnp.isfinite(norm), norm, 0.0)
        operands = (model, state.opt_state, grads)
        if skip_nonfinite:
            finite = jnp.isfinite(loss) & jnp.isfinite(norm)
            model, opt_state = lax.cond(finite, update, keep, operands)
        else:
            model, opt_state = update(operands)
        state = eqx.tree_at(
            lambda s: (s.model, s.opt_state, s.step, s.batch),
            state,
            (model, opt_state, state.step + 1, state.batch + 1),
        )
        return state, loss, norm

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

    def __init__(
        self,
        train_step,
        static: TrainState,
        batch_size: int,
        *,
        check_model: Callable[[eqx.Module], Any] | None = None,
    ):
        """`check_model(model)`: the arrays to check after each program's steps
        (`StepTotals.check_model`), for a run that stops at a non-finite step."""
        self._static = static
        self._batch_size = batch_size

        def checked(totals: StepTotals, dynamic) -> StepTotals:
            if check_model is None:
                return totals
            model = eqx.combine(dynamic.model, static.model)
            return totals.check_model(dynamic.step - 1, check_model(model))

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

            dynamic, totals = lax.fori_loop(0, num_steps, body, (dynamic, totals))
            return dynamic, checked(totals, dynamic)

        def one_step(dynamic, totals, batch):
            state = eqx.combine(dynamic, static)
            step = state.step
            state, loss, grad_norm = train_step(state, batch)
            size = jax.tree.leaves(batch)[0].shape[0]
            dynamic = eqx.filter(state, eqx.is_array)
            return dynamic, checked(totals.add(step, loss, grad_norm, size), dynamic)

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


# Per-example gradients: `jax.vmap` of `jax.grad`, the seed lesson exercise, as a call.


def per_example_grads(
    loss: str | LossFn, model: eqx.Module, batch: Batch, *, key: PRNGKeyArray | None = None
) -> PyTree:
    """The gradient of the loss of each example of `batch` separately.

    Each example is made a batch of one and differentiated, with `jax.vmap` over the examples:
    one compiled program, not a Python loop.

    **Arguments:**

    - `loss`: a loss name (`"cross_entropy"`, `"mse"`, `"bce"`) or a callable
      `loss(model, batch, key) -> scalar` or `loss(model, batch) -> scalar` (see
      [Write your own loss](../training.md#write-your-own-loss)).
    - `model`: the model.
    - `batch`: a mapping of arrays whose leading axis indexes the examples.
    - `key`: passed to the loss for every example (e.g. dropout); `None` for none.

    **Returns:**

    A pytree shaped like `model` whose array leaves gain a leading axis of length batch size.

    **Example:**

    ```python
    model = zoo.MLP(in_size=784, out_size=10, hidden=(256,), key=jax.random.key(0))
    x, y = jnp.ones((64, 784)), jnp.zeros(64, "int32")
    grads = zoo.per_example_grads("cross_entropy", model, {"x": x[:32], "y": y[:32]})
    assert grads.layers[0].weight.shape == (32, 256, 784)
    ```
    """
    loss_fn = resolve_loss(loss)

    def example_grad(example):
        as_batch = jax.tree.map(lambda leaf: leaf[None], example)
        return eqx.filter_grad(loss_fn)(model, as_batch, key)

    return eqx.filter_vmap(example_grad)(dict(batch))


def per_example_grad_norms(
    loss: str | LossFn, model: eqx.Module, batch: Batch, *, key: PRNGKeyArray | None = None
) -> Float[Array, " batch"]:
    """The global (all-parameter) L2 norm of each example's gradient, as in DP-SGD clipping.

    **Arguments:** as [`zoo.per_example_grads`][].

    **Returns:**

    A vector with one norm per example.

    **Example:**

    ```python
    model = zoo.MLP(in_size=64, out_size=10, hidden=(32,), key=jax.random.key(0))
    batch = {"x": jnp.ones((16, 64)), "y": jnp.zeros(16, "int32")}
    norms = zoo.per_example_grad_norms("cross_entropy", model, batch)  # shape (batch,)
    ```
    """
    grads = per_example_grads(loss, model, batch, key=key)
    return jax.vmap(optax.tree.norm)(eqx.filter(grads, eqx.is_array))
