"""`zoo.sparse.partition` and `zoo.sparse.apply_updates`: one optimizer for a whole model."""

from typing import NamedTuple

import equinox as eqx
import jax
import optax

from .. import _checks
from .._custom_types import PyTree
from . import _native
from ._lookups import is_embedding, split_params
from ._optimizers import SparseGradientTransformation, checked_state
from ._rows import SparseRows, is_sparse_rows


class PartitionState(NamedTuple):
    """State of `zoo.sparse.partition`: the dense optimizer's and the sparse optimizer's."""

    dense: optax.OptState
    embeddings: PyTree


def _split_grads(grads: PyTree) -> tuple[PyTree, PyTree]:
    """`(tables, rest)` of gradients or updates: the `SparseRows`, and every other leaf."""
    return eqx.partition(grads, is_sparse_rows, is_leaf=is_sparse_rows)


def partition(
    dense: optax.GradientTransformation, embeddings: SparseGradientTransformation
) -> SparseGradientTransformation:
    """Train embedding tables with a sparse optimizer and everything else with an optax one.

    **Arguments:**

    - `dense`: any `optax.GradientTransformation` (chains, schedules, clipping, ...), applied
        to every floating array of the model that is not an `Embedding.weight`. It sees a
        pytree of the model's structure with `None` at the tables.
    - `embeddings`: a sparse transformation (`zoo.sparse.sgd`, `rowwise_adagrad`, `adagrad`,
        `lazy_adam`) applied to every `Embedding.weight`.

    **Returns:**

    A `SparseGradientTransformation` over whole models:

    - `init(model) -> PartitionState`;
    - `update(grads, state, model=None) -> (updates, state)`, with `grads` from
        `zoo.sparse.value_and_grad` (pass `model` when the dense optimizer needs params).

    Apply the updates with `zoo.sparse.apply_updates`.

    !!! example

        ```{.python notest}
        # a fragment: model and loss_fn are yours (docs/sparse.md has the whole example)
        opt = zoo.sparse.partition(
            dense=optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)),
            embeddings=zoo.sparse.rowwise_adagrad(0.05),
        )
        opt_state = opt.init(model)

        @eqx.filter_jit(donate="all")
        def step(model, opt_state, batch):
            loss, grads = zoo.sparse.value_and_grad(loss_fn)(model, batch)
            updates, opt_state = opt.update(grads, opt_state, model)
            return zoo.sparse.apply_updates(model, updates), opt_state, loss
        ```

    Gradient transformations in `dense` see only the dense gradients: a global-norm clip, for
    instance, ignores the tables.
    """
    _check_parts(dense, embeddings)

    def init(model: PyTree) -> PartitionState:
        tables, rest = split_params(model)
        dense_state = dense.init(rest)
        _check_dense_state(dense_state)
        return PartitionState(dense=dense_state, embeddings=embeddings.init(tables))

    def update(grads: PyTree, state: PartitionState, model: PyTree = None):
        checked_state("partition", state, PartitionState)
        _check_table_grads(grads)
        table_grads, rest_grads = _split_grads(grads)
        tables, rest = (None, None) if model is None else split_params(model)
        rest_updates, dense_state = dense.update(rest_grads, state.dense, rest)
        table_updates, table_state = embeddings.update(table_grads, state.embeddings, tables)
        updates = eqx.combine(table_updates, rest_updates, is_leaf=is_sparse_rows)
        return updates, PartitionState(dense_state, table_state)

    in_place_scale = None
    if embeddings.in_place_scale is not None:
        in_place_scale = lambda state: embeddings.in_place_scale(  # noqa: E731
            checked_state("partition", state, PartitionState).embeddings
        )

    apply_in_place = None
    if embeddings.apply_in_place is not None:

        def apply_in_place(grads: PyTree, state: PartitionState, model: PyTree):
            checked_state("partition", state, PartitionState)
            _check_table_grads(grads)
            table_grads, rest_grads = _split_grads(grads)
            tables, rest = split_params(model)
            rest_updates, dense_state = dense.update(rest_grads, state.dense, rest)
            tables, table_state = embeddings.apply_in_place(table_grads, state.embeddings, tables)
            model = apply_updates(model, rest_updates)
            static = eqx.filter(model, eqx.is_inexact_array, inverse=True)
            model = eqx.combine(tables, split_params(model)[1], static)
            return model, PartitionState(dense_state, table_state)

    return SparseGradientTransformation(init, update, in_place_scale, apply_in_place)


_PARTITION_EXAMPLE = (
    "zoo.sparse.partition(dense=optax.adam(1e-3), embeddings=zoo.sparse.rowwise_adagrad(0.05))"
)


_MULTI_STEPS = (
    "dense must not be optax.MultiSteps (or hold one): it accumulates the dense gradients over "
    "k steps and updates once, while the tables are updated at every step, so the two halves "
    "of the model would train on different batches. Take larger batches instead: a sparse "
    "step costs O(batch), whatever the table's size."
)


def _check_dense_state(state) -> None:
    """The state of a dense optimizer that cannot run beside the sparse one, refused at init
    (MultiSteps may hide inside a chain or `inject_hyperparams`; its state shows it)."""
    is_multi = lambda x: isinstance(x, optax.MultiStepsState)  # noqa: E731
    if any(is_multi(x) for x in jax.tree.leaves(state, is_leaf=is_multi)):
        raise TypeError(_MULTI_STEPS)


def _check_table_grads(grads: PyTree) -> None:
    """Each table's gradient must be `SparseRows` (or `None`): a dense one, from
    `eqx.filter_grad`, would reach the dense optimizer, whose state has no place for it."""
    for path, node in jax.tree_util.tree_leaves_with_path(grads, is_leaf=is_embedding):
        if is_embedding(node) and eqx.is_array(node.weight):
            raise TypeError(
                "grads hold a dense gradient of the embedding table at "
                f"grads{jax.tree_util.keystr(path)}.weight (shape {node.weight.shape}): "
                "zoo.sparse optimizers take the tables' gradients as rows. Take gradients "
                "with zoo.sparse.value_and_grad(loss_fn)(model, batch), not eqx.filter_grad "
                "(or train the whole model with an optax optimizer and eqx.apply_updates)."
            )


def _check_parts(dense, embeddings) -> None:
    """`dense` an optax optimizer and `embeddings` a sparse one: swapped, each would be accepted
    and fail only at the first step."""
    if isinstance(dense, optax.MultiSteps):
        raise TypeError(_MULTI_STEPS)
    if isinstance(dense, SparseGradientTransformation):
        raise TypeError(
            "dense must be an optax optimizer such as optax.adam(1e-3); got a zoo.sparse "
            f"optimizer (are dense and embeddings swapped?). For example: {_PARTITION_EXAMPLE}"
        )
    if not (callable(getattr(dense, "init", None)) and callable(getattr(dense, "update", None))):
        raise TypeError(
            "dense must be an optax optimizer such as optax.adam(1e-3); got "
            f"{_checks.describe(dense)}. For example: {_PARTITION_EXAMPLE}"
        )
    if not isinstance(embeddings, SparseGradientTransformation):
        raise TypeError(
            "embeddings must be a zoo.sparse optimizer such as zoo.sparse.rowwise_adagrad(0.05); "
            f"got {type(embeddings).__name__}. For example: {_PARTITION_EXAMPLE}"
        )


def _apply(update, param):
    if update is None:
        return param
    if isinstance(update, SparseRows):
        # Padding ids are out of range and dropped; with `param` donated this is in place.
        if _native.native_for(param.dtype):
            return _native.scatter_add_rows(param, update.ids, update.values)
        return param.at[update.ids].add(
            update.values.astype(param.dtype),
            mode="drop",
            unique_indices=True,
            wrap_negative_indices=False,
        )
    return (param + update).astype(param.dtype)


def apply_updates(model: PyTree, updates: PyTree) -> PyTree:
    """`model` plus `updates`: as `eqx.apply_updates`, with `SparseRows` added row by row.

    **Arguments:**

    - `model`: the model (or any pytree of parameters).
    - `updates`: from a `SparseGradientTransformation`: the model's structure with `None` for
        leaves to leave alone, dense arrays, and `SparseRows` for embedding tables.

    **Returns:**

    The updated model. Each table is changed only at its updated rows; jit the step with
    `donate="all"` (or donate the model) so that XLA does this in place.

    This is the one function that applies sparse updates: `eqx.apply_updates` and
    `optax.apply_updates` do not know `SparseRows`.
    """
    is_leaf = lambda x: x is None or is_sparse_rows(x)  # noqa: E731
    return jax.tree.map(_apply, updates, model, is_leaf=is_leaf)
