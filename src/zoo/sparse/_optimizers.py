"""Sparse optimizers: optax-style init/update pairs that touch only the rows in a gradient.

Each transformation maps over the tables of a pytree. Its gradients are `SparseRows`
(coalesced: each row at most once, the other entries an out-of-range sentinel), its updates
are `SparseRows` with the same ids, and its per-row state is gathered at those ids and
scattered back with `mode="drop"`. With the table and state donated to a jitted step, every
scatter is in place, so a step costs `O(batch)`, not `O(table)`.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float, Int

from .. import _checks
from .._custom_types import PyTree, RealLike
from . import _native
from ._rows import SparseRows, is_sparse_rows

ScalarOrSchedule = RealLike | Callable[[Int[Array, ""]], Float[Array, ""]]


class SparseGradientTransformation(NamedTuple):
    """An optimizer whose gradients may hold `SparseRows`: `zoo.sparse`'s analogue of
    `optax.GradientTransformation`, recognisable with `isinstance`.

    **Fields:**

    - `init`: `init(params) -> state`, a pytree of arrays.
    - `update`: `update(grads, state, params=None) -> (updates, state)`, where `grads` comes from
        `zoo.sparse.value_and_grad`. Apply the updates with `zoo.sparse.apply_updates`.
    - `in_place_scale`: `None`, or `in_place_scale(state) -> scale` for an optimizer whose
        update of every table is `scale * grad` (`zoo.sparse.sgd`: `-learning_rate`). Then
        `zoo.sparse.value_and_update` and `zoo.train` add the update into the table during the
        backward pass, and `update` takes `None` for the tables (their update is done) and
        still advances the state.
    - `apply_in_place`: `None`, or `apply_in_place(grads, state, params) -> (params, state)`:
        `update` and `zoo.sparse.apply_updates` in one pass over each table's rows, with the
        table and the state updated in place (zoo's native CPU kernels; see
        `zoo.sparse.kernels`). `zoo.sparse.value_and_update` and `zoo.train` use it there.
    """

    init: Callable[[PyTree], PyTree]
    update: Callable[..., tuple[PyTree, PyTree]]
    in_place_scale: Callable[[PyTree], Float[Array, ""]] | None = None
    apply_in_place: Callable[..., tuple[PyTree, PyTree]] | None = None


class SGDState(NamedTuple):
    """State of `zoo.sparse.sgd`: the number of updates so far (for schedules)."""

    count: Int[Array, ""]


class AdagradState(NamedTuple):
    """State of `zoo.sparse.adagrad` and `zoo.sparse.rowwise_adagrad`.

    `sum_of_squares` mirrors the tables: `(num_rows, dim)` arrays for `adagrad`, `(num_rows,)`
    for `rowwise_adagrad`.
    """

    count: Int[Array, ""]
    sum_of_squares: PyTree


class LazyAdamState(NamedTuple):
    """State of `zoo.sparse.lazy_adam`: the global step and, per table, both moments of each
    element as one complex number `m + 1j * v`, in a `(num_rows, dim)` complex64 array
    (complex128 for a float64 table). Read them as `state.mu` and `state.nu`.

    Why complex: a step gathers and scatters the moments of the looked-up rows, and one array
    of 8-byte elements costs one access per row where separate `m` and `v` would cost two.
    The layout is measured on XLA:CPU, where it made the step 1.4-1.5x faster; see
    "The optimizers" in docs/sparse.md for the figures and the backends it was measured on.
    """

    count: Int[Array, ""]
    moments: PyTree

    @property
    def mu(self) -> PyTree:
        """The first moments, `(num_rows, dim)` per table (a copy)."""
        return jax.tree.map(jnp.real, self.moments)

    @property
    def nu(self) -> PyTree:
        """The second moments, `(num_rows, dim)` per table (a copy)."""
        return jax.tree.map(jnp.imag, self.moments)


def _check_learning_rate(name: str, learning_rate: ScalarOrSchedule) -> ScalarOrSchedule:
    """Eagerly rejects a learning rate that cannot train: not positive, or not finite. A NumPy
    scalar comes back as a Python float (zoo's one rule for arguments, `zoo._checks`)."""
    if callable(learning_rate):
        return learning_rate
    if not _checks.is_real(learning_rate):
        raise TypeError(
            f"learning_rate of zoo.sparse.{name} must be a positive float or an optax schedule; "
            f"got {learning_rate!r}. For example zoo.sparse.{name}(0.05)."
        )
    if not 0 < learning_rate < float("inf"):
        raise ValueError(
            f"learning_rate of zoo.sparse.{name} must be positive and finite; got "
            f"{learning_rate!r}. For example zoo.sparse.{name}(0.05)."
        )
    return float(learning_rate)


def checked_state(name: str, state, kind: type):
    """`state`, refused unless it is `kind`, the state of `zoo.sparse.{name}`: the state of an
    optax optimizer (or of another sparse one) would fail deep inside the step."""
    if not isinstance(state, kind):
        raise TypeError(
            f"opt_state of zoo.sparse.{name} must be its {kind.__name__}, made by its init; got "
            f"{type(state).__name__} (the state of another optimizer, an optax one?). For "
            "example: opt = zoo.sparse.partition(dense=optax.adam(1e-3), "
            "embeddings=zoo.sparse.sgd(0.1)); opt_state = opt.init(model)."
        )
    return state


def _learning_rate(name: str, learning_rate: ScalarOrSchedule, count: Int[ArrayLike, ""]):
    """The rate at step `count`; a schedule's is checked (as `zoo.train` checks one), since a
    negative rate would train away from the minimum and a NaN would fill the looked-up rows."""
    if not callable(learning_rate):
        return learning_rate
    rate = jnp.asarray(learning_rate(count), jnp.float32)

    def report(rate):
        rate = float(np.ravel(rate)[0])
        raise ValueError(
            f"learning_rate of zoo.sparse.{name}: the schedule returned {rate:g} at a step; "
            "a schedule must return finite values >= 0, e.g. "
            "optax.linear_schedule(1e-3, 1e-5, transition_steps=1000)."
        )

    return _checks.raise_if(rate, ~(rate >= 0) | ~jnp.isfinite(rate), report)


def _scaled(scale, values: Array) -> Array:
    # A schedule gives a float32 scalar; keep the table's dtype (bfloat16 tables included).
    return jnp.asarray(scale, values.dtype) * values


def _gather(state: Array, ids: Int[Array, " n"]) -> Array:
    # Padding ids are out of range: read zeros there (their values are zero and get dropped).
    if _native.native():  # reads zeros at every id outside [0, rows), negative ones too
        return _native.gather_rows(state, ids)
    return state.at[ids].get(mode="fill", fill_value=0, wrap_negative_indices=False)


def _scatter(state: Array, ids: Int[Array, " n"], rows: Array) -> Array:
    if _native.native():  # drops every id outside [0, rows), negative ones too
        return _native.scatter_rows(state, ids, rows)
    return state.at[ids].set(
        rows.astype(state.dtype), mode="drop", unique_indices=True, wrap_negative_indices=False
    )


def _map_tables(name: str, n_out: int, fn: Callable, grads: PyTree, *states: PyTree):
    """Apply `fn(grad_rows, *state_leaves) -> n_out-tuple` per table; one pytree per output."""
    is_leaf = lambda x: x is None or is_sparse_rows(x)  # noqa: E731
    treedef = jax.tree.structure(grads, is_leaf=is_leaf)

    def per_table(g, *leaves):
        if g is None:
            return (None,) * n_out
        if not is_sparse_rows(g):
            raise TypeError(
                f"zoo.sparse.{name} updates embedding tables only, and got a dense gradient "
                f"of shape {jnp.shape(g)}. Combine it with a dense optimizer: "
                f"zoo.sparse.partition(dense=optax.adam(1e-3), embeddings=zoo.sparse.{name}(...)), "
                "and take gradients with zoo.sparse.value_and_grad."
            )
        return fn(g, *leaves)

    columns = [treedef.flatten_up_to(tree) for tree in (grads, *states)]
    outs = [per_table(*args) for args in zip(*columns, strict=True)]
    return tuple(treedef.unflatten([out[k] for out in outs]) for k in range(n_out))


def _table_state(init_value: float, row_shape: Callable[[Array], tuple[int, ...]]):
    def init(params: PyTree) -> PyTree:
        return jax.tree.map(lambda w: jnp.full(row_shape(w), init_value, w.dtype), params)

    return init


def _moments_dtype(table_dtype) -> jnp.dtype:
    """Complex pairs of the table's precision, and at least of float32."""
    return jnp.dtype(jnp.complex128 if table_dtype == jnp.float64 else jnp.complex64)


def sgd(learning_rate: ScalarOrSchedule) -> SparseGradientTransformation:
    """Stochastic gradient descent on the looked-up rows: `w[i] -= lr * g[i]`.

    Exactly the dense update restricted to the rows with a gradient (the others would not move).
    Its update is linear in the gradient, so `zoo.sparse.value_and_update` and `zoo.train` add
    it into the table during the backward pass (a `jax.Ref` of the table receives `-lr * grad`
    at each looked-up row, duplicates adding up): no ids recorded, nothing sorted, and lookups
    anywhere in the loss.

    **Arguments:**

    - `learning_rate`: a float or an optax schedule `count -> learning rate`.

    **Returns:**

    A `SparseGradientTransformation` with state `SGDState`.

    !!! example

        ```python
        opt = zoo.sparse.partition(dense=optax.sgd(0.1), embeddings=zoo.sparse.sgd(0.1))
        ```
    """

    learning_rate = _check_learning_rate("sgd", learning_rate)

    def init(params: PyTree) -> SGDState:
        del params
        return SGDState(count=jnp.zeros((), jnp.int32))

    def update(grads: PyTree, state: SGDState, params: PyTree = None):
        del params
        checked_state("sgd", state, SGDState)
        lr = _learning_rate("sgd", learning_rate, state.count)

        def rows(g: SparseRows):
            return (SparseRows(g.ids, _scaled(-lr, g.values), g.num_rows),)

        (updates,) = _map_tables("sgd", 1, rows, grads)
        return updates, SGDState(optax.safe_int32_increment(state.count))

    def in_place_scale(state: SGDState) -> Float[Array, ""]:
        checked_state("sgd", state, SGDState)
        return -jnp.asarray(_learning_rate("sgd", learning_rate, state.count), jnp.float32)

    return SparseGradientTransformation(init, update, in_place_scale)


def _adagrad(
    name: str, learning_rate: ScalarOrSchedule, eps: RealLike, init_value: RealLike, rowwise: bool
) -> SparseGradientTransformation:
    learning_rate = _check_learning_rate(name, learning_rate)
    example = f"zoo.sparse.{name}(0.05, eps=1e-10)"
    eps = _checks.real("eps", eps, low=0.0, example=example)
    init_value = _checks.real("init_value", init_value, low=0.0, example=example)
    row_shape = (lambda w: w.shape[:1]) if rowwise else (lambda w: w.shape)

    def init(params: PyTree) -> AdagradState:
        sums = _table_state(init_value, row_shape)(params)
        return AdagradState(count=jnp.zeros((), jnp.int32), sum_of_squares=sums)

    def update(grads: PyTree, state: AdagradState, params: PyTree = None):
        del params
        checked_state(name, state, AdagradState)
        lr = _learning_rate(name, learning_rate, state.count)

        def rows(g: SparseRows, sums: Array):
            squares = jnp.square(g.values)
            new = _gather(sums, g.ids) + (jnp.mean(squares, axis=-1) if rowwise else squares)
            scale = jnp.sqrt(new)[:, None] if rowwise else jnp.sqrt(new)
            step = SparseRows(g.ids, _scaled(-lr, g.values / (scale + eps)), g.num_rows)
            return step, _scatter(sums, g.ids, new)

        updates, sums = _map_tables(name, 2, rows, grads, state.sum_of_squares)
        return updates, AdagradState(optax.safe_int32_increment(state.count), sums)

    def apply_in_place(grads: PyTree, state: AdagradState, params: PyTree):
        checked_state(name, state, AdagradState)
        lr = _learning_rate(name, learning_rate, state.count)

        def rows(g: SparseRows, sums: Array, table: Array):
            return _native.rowwise_adagrad(table, sums, g.ids, g.values, lr, eps)

        tables, sums = _map_tables(name, 2, rows, grads, state.sum_of_squares, params)
        return tables, AdagradState(optax.safe_int32_increment(state.count), sums)

    fused = apply_in_place if rowwise else None
    return SparseGradientTransformation(init, update, apply_in_place=fused)


def rowwise_adagrad(
    learning_rate: ScalarOrSchedule, eps: RealLike = 1e-8, initial_accumulator_value: RealLike = 0.0
) -> SparseGradientTransformation:
    """Row-wise Adagrad, as FBGEMM's `EXACT_ROWWISE_ADAGRAD` and torchrec: one accumulator per row.

    For each row `i` with a gradient `g[i]` (duplicates summed):
    `acc[i] += mean_d(g[i, d] ** 2)`, then `w[i] -= lr * g[i] / (sqrt(acc[i]) + eps)`.
    Rows without a gradient are untouched, exactly as in the dense formula. The state is
    `num_rows` floats per table instead of a copy of the table.

    **Arguments:**

    - `learning_rate`: a float or an optax schedule `count -> learning rate`.
    - `eps`: added to `sqrt(acc)`.
    - `initial_accumulator_value`: the starting value of every accumulator.

    **Returns:**

    A `SparseGradientTransformation` with state `AdagradState` (`(num_rows,)` per table).

    !!! example

        ```python
        opt = zoo.sparse.partition(
            dense=optax.adam(1e-3), embeddings=zoo.sparse.rowwise_adagrad(0.05)
        )
        ```
    """
    return _adagrad("rowwise_adagrad", learning_rate, eps, initial_accumulator_value, True)


def adagrad(
    learning_rate: ScalarOrSchedule,
    eps: RealLike = 1e-10,
    initial_accumulator_value: RealLike = 0.0,
) -> SparseGradientTransformation:
    """Element-wise Adagrad, as `torch.optim.Adagrad` on a sparse gradient.

    For each row `i` with a gradient: `acc[i] += g[i] ** 2` (element-wise), then
    `w[i] -= lr * g[i] / (sqrt(acc[i]) + eps)`. Exact: rows without a gradient are untouched,
    as in the dense formula. The state is a second table.

    **Arguments:**

    - `learning_rate`: a float or an optax schedule `count -> learning rate`.
    - `eps`: added to `sqrt(acc)`.
    - `initial_accumulator_value`: the starting value of every accumulator.

    **Returns:**

    A `SparseGradientTransformation` with state `AdagradState` (`(num_rows, dim)` per table).
    """
    return _adagrad("adagrad", learning_rate, eps, initial_accumulator_value, False)


def lazy_adam(
    learning_rate: ScalarOrSchedule, b1: RealLike = 0.9, b2: RealLike = 0.999, eps: RealLike = 1e-8
) -> SparseGradientTransformation:
    """Lazy Adam, as `torch.optim.SparseAdam` (and TF's `LazyAdam`).

    Let `t` be the global step (the number of updates so far, this one included). For each row
    `i` with a gradient `g[i]` (duplicates summed), and only for those rows:

    ```
    m[i] = b1 * m[i] + (1 - b1) * g[i]
    v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
    w[i] -= lr * sqrt(1 - b2 ** t) / (1 - b1 ** t) * m[i] / (sqrt(v[i]) + eps)
    ```

    Rows without a gradient keep their moments and weights: unlike dense Adam, whose momentum
    keeps moving every row it has ever seen, so the two differ (this is not an exact sparse form
    of `optax.adam`). Bias correction uses the global step, not a per-row count, and `eps` is
    added to `sqrt(v)` before bias correction: both as in PyTorch's `SparseAdam`.

    **Arguments:**

    - `learning_rate`: a float or an optax schedule `count -> learning rate`.
    - `b1`, `b2`: the decay rates of the first and second moments.
    - `eps`: added to `sqrt(v)`.

    **Returns:**

    A `SparseGradientTransformation` with state `LazyAdamState`: both moments of a table in
    one `(num_rows, dim)` complex array. The moments are float32 also for a bfloat16 or
    float16 table, where `v`'s updates of `1 - b2 = 0.001` times itself would round away.
    """

    learning_rate = _check_learning_rate("lazy_adam", learning_rate)
    example = "zoo.sparse.lazy_adam(1e-3, b1=0.9, b2=0.999)"
    b1 = _checks.real("b1", b1, low=0.0, high=1.0, high_open=True, example=example)
    b2 = _checks.real("b2", b2, low=0.0, high=1.0, high_open=True, example=example)
    eps = _checks.real("eps", eps, low=0.0, low_open=True, example=example)

    def init(params: PyTree) -> LazyAdamState:
        moments = jax.tree.map(lambda w: jnp.zeros(w.shape, _moments_dtype(w.dtype)), params)
        return LazyAdamState(count=jnp.zeros((), jnp.int32), moments=moments)

    def update(grads: PyTree, state: LazyAdamState, params: PyTree = None):
        del params
        checked_state("lazy_adam", state, LazyAdamState)
        count = optax.safe_int32_increment(state.count)
        t = count.astype(jnp.float32)
        lr = _learning_rate("lazy_adam", learning_rate, state.count)
        step_size = lr * jnp.sqrt(1 - b2**t) / (1 - b1**t)

        def rows(g: SparseRows, moments: Array):
            old = _gather(moments, g.ids)
            grad = g.values.astype(old.real.dtype)
            m = b1 * old.real + (1 - b1) * grad
            v = b2 * old.imag + (1 - b2) * jnp.square(grad)
            direction = (m / (jnp.sqrt(v) + eps)).astype(g.values.dtype)
            step = SparseRows(g.ids, _scaled(-step_size, direction), g.num_rows)
            return step, _scatter(moments, g.ids, jax.lax.complex(m, v))

        updates, moments = _map_tables("lazy_adam", 2, rows, grads, state.moments)
        return updates, LazyAdamState(count, moments)

    def apply_in_place(grads: PyTree, state: LazyAdamState, params: PyTree):
        checked_state("lazy_adam", state, LazyAdamState)
        count = optax.safe_int32_increment(state.count)
        t = count.astype(jnp.float32)
        lr = _learning_rate("lazy_adam", learning_rate, state.count)
        step_size = lr * jnp.sqrt(1 - b2**t) / (1 - b1**t)

        def rows(g: SparseRows, moments: Array, table: Array):
            return _native.lazy_adam(table, moments, g.ids, g.values, step_size, b1, b2, eps)

        tables, moments = _map_tables("lazy_adam", 2, rows, grads, state.moments, params)
        return tables, LazyAdamState(count, moments)

    return SparseGradientTransformation(init, update, apply_in_place=apply_in_place)
