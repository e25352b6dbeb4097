"""`jnp.take(weight, ids, axis=0)` inside a loss, on every sparse path.

Inside a `zoo.sparse` pass an `Embedding.weight` is a `TableView`, which reads rows through
its own methods. `jnp.take` never calls them: it converts its argument to an array
(`__jax_array__`) inside its own `jit`, before anything sees the ids, and gathers rows from
that array. So `reading_rows(fn)` first traces the loss abstractly (`jax.make_jaxpr`) with
each view numbered (`probe=i`); a numbered view answers the conversion with a stand-in of the
table's shape, made by a `jit` named `STAND_IN + str(i)`.

- No stand-in in the trace (no `jnp.take` of a table): the loss is called as it is.
- Otherwise the trace is replayed in the caller's trace, equation by equation, each `jit` that
  holds a stand-in inlined, with every gather of whole rows from a stand-in (the gather
  `jnp.take(weight, ids, axis=0)` makes, under `jax.vmap` too) replaced by
  `view.read(ids, mode=...)`, the path's own read, with the gather's out-of-range mode. Any
  other use of a stand-in reads the whole table and raises the view's `TypeError`. A
  `jax.checkpoint` holding a stand-in is rebuilt around the replay of its body; a stand-in
  inside `lax.scan`, `lax.cond`, a loop or a custom derivative, which the replay does not
  rebuild, raises a `TypeError` naming `weight.take(ids, axis=0)`, which works there.

The stand-in itself is never computed: the replay skips the `jit` that makes it.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.extend.core import ClosedJaxpr, Jaxpr, JaxprEqn, Literal
from jax.extend.core.primitives import gather_p, jit_p, remat_p
from jax.lax import GatherScatterMode

from .._nn._embedding import STAND_IN, TableView
from ._lookups import sub_jaxprs

# A loss that needs concrete values (Python control flow on an eager batch) cannot be traced
# abstractly: it is called as it is, as before `jnp.take` was read.
_NEEDS_VALUES = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerIntegerConversionError,
)

_MODES = {
    GatherScatterMode.FILL_OR_DROP: "fill",
    GatherScatterMode.CLIP: "clip",
    GatherScatterMode.PROMISE_IN_BOUNDS: None,
}


def _is_view(x) -> bool:
    return isinstance(x, TableView)


def reading_rows(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn(model, *args, **kwargs)`, for a `model` whose tables are views, with each
    `jnp.take(weight, ids, axis=0)` of a table read through its view (`view.read`, in the
    mode of `jnp.take`).

    The first call decides whether `fn` takes rows with `jnp.take` (one abstract trace); if
    not, this and later calls call `fn` itself. Make one per step: the passes of a step call
    `fn` alike, with other views.
    """
    plain = False

    @functools.wraps(fn)
    def call(model, *args, **kwargs):
        nonlocal plain
        views = [x for x in jax.tree.leaves(model, is_leaf=_is_view) if _is_view(x)]
        if plain or not views:
            return fn(model, *args, **kwargs)
        numbers = iter(range(len(views)))

        def number(x):
            return dataclasses.replace(x, probe=next(numbers)) if _is_view(x) else x

        probing = jax.tree.map(number, model, is_leaf=_is_view)
        static = []

        def probe():
            arrays, rest = eqx.partition(fn(probing, *args, **kwargs), eqx.is_array)
            static.append(rest)
            return arrays

        try:
            closed, shapes = jax.make_jaxpr(probe, return_shape=True)()
        except _NEEDS_VALUES:
            closed = None
        if closed is None or not _stand_ins(closed.jaxpr):
            plain = True
            return fn(model, *args, **kwargs)
        out = _replay(closed.jaxpr, closed.consts, [], views)
        return eqx.combine(jax.tree.unflatten(jax.tree.structure(shapes), out), static[0])

    return call


def _stand_in_number(eqn: JaxprEqn) -> int | None:
    name = eqn.params.get("name", "") if eqn.primitive is jit_p else ""
    if isinstance(name, str) and name.startswith(STAND_IN):
        return int(name[len(STAND_IN) :])
    return None


def _stand_ins(jaxpr: Jaxpr) -> list[int]:
    """The numbers of the views whose stand-ins `jaxpr` makes, at any depth."""
    found = []
    for eqn in jaxpr.eqns:
        number = _stand_in_number(eqn)
        if number is not None:
            found.append(number)
        else:
            found += [n for sub in sub_jaxprs(eqn.params) for n in _stand_ins(sub)]
    return found


class _Whole:
    """A stand-in's value in the replay: the view it stands for."""

    def __init__(self, view: TableView):
        self.view = view


def _replay(jaxpr: Jaxpr, consts, args, views: list[TableView]) -> list[Any]:
    env: dict = {}

    def read(v):
        return v.val if isinstance(v, Literal) else env[v]

    for var, value in zip([*jaxpr.constvars, *jaxpr.invars], [*consts, *args], strict=True):
        env[var] = value
    for eqn in jaxpr.eqns:
        outs = _replay_eqn(eqn, [read(v) for v in eqn.invars], views)
        for var, value in zip(eqn.outvars, outs, strict=True):
            env[var] = value
    return [read(v) for v in jaxpr.outvars]


def _replay_eqn(eqn: JaxprEqn, ins: list, views: list[TableView]) -> list:
    number = _stand_in_number(eqn)
    if number is not None:
        return [_Whole(views[number])]
    whole = [x for x in ins if isinstance(x, _Whole)]
    if eqn.primitive is jit_p and (whole or _stand_ins(eqn.params["jaxpr"].jaxpr)):
        inner = eqn.params["jaxpr"]
        return _replay(inner.jaxpr, inner.consts, ins, views)
    if whole:
        view = whole[0].view
        if eqn.primitive is gather_p and ins[0] is whole[0] and len(whole) == 1:
            rows = _row_read(eqn, view, ins[1])
            if rows is not None:
                return [rows]
            how = "a gather of other than whole rows: `jnp.take(weight, ids)` without axis=0"
        else:
            how = f"converted to an array and used by `{eqn.primitive.name}`"
        raise TypeError(view._read_directly(how))
    inside = [n for sub in sub_jaxprs(eqn.params) for n in _stand_ins(sub)]
    if inside and eqn.primitive is remat_p:
        return _checkpointed(eqn, ins, views)
    if inside:
        view = views[inside[0]]
        raise TypeError(
            f"zoo.sparse: {view._name()} is converted to an array (by `jnp.take(weight, ...)` "
            f"or another jnp function) inside `{eqn.primitive.name}` (jax.lax.scan, "
            "jax.lax.cond, a loop, a custom derivative and the like), where zoo does not turn "
            "`jnp.take(weight, ids, axis=0)` into a read of rows. Read the rows with "
            "`weight.take(ids, axis=0)` there (or `weight[ids]`, or by calling the Embedding), "
            'or call jnp.take outside it. See docs/sparse.md, "Reading a table inside the '
            'loss".'
        )
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(eqn.params))
    return out if eqn.primitive.multiple_results else [out]


def _checkpointed(eqn: JaxprEqn, ins: list, views: list[TableView]) -> list:
    """A `jax.checkpoint` (`remat`) whose body converts a table: the body replayed inside a
    new `jax.checkpoint` with the same policy, so that the rows are read there."""
    body = eqn.params["jaxpr"]
    jaxpr, consts = (body.jaxpr, body.consts) if isinstance(body, ClosedJaxpr) else (body, ())
    arrays = [x for x in ins if not isinstance(x, _Whole)]

    def replayed(*arrays):
        given = iter(arrays)
        args = [x if isinstance(x, _Whole) else next(given) for x in ins]
        return _replay(jaxpr, consts, args, views)

    checkpoint = jax.checkpoint(
        replayed, prevent_cse=eqn.params["prevent_cse"], policy=eqn.params["policy"]
    )
    return checkpoint(*arrays)


def _row_read(eqn: JaxprEqn, view: TableView, indices) -> jax.Array | None:
    """The gather `eqn` of the whole table, as `view.read`; `None` unless it gathers whole
    rows by one id each (operand `(rows, dim)`, indices `(*ids, 1)`, output `(*ids, dim)`)."""
    params, dims = eqn.params, eqn.params["dimension_numbers"]
    operand, ids = eqn.invars[0].aval, eqn.invars[1].aval
    whole_rows = (
        len(operand.shape) == 2
        and ids.ndim >= 1
        and ids.shape[-1] == 1
        and tuple(dims.offset_dims) == (ids.ndim - 1,)
        and tuple(dims.collapsed_slice_dims) == (0,)
        and tuple(dims.start_index_map) == (0,)
        and not dims.operand_batching_dims
        and not dims.start_indices_batching_dims
        and tuple(params["slice_sizes"]) == (1, operand.shape[1])
        and params["mode"] in _MODES
    )
    if not whole_rows:
        return None
    # jnp.take has wrapped negative ids already (in "fill" mode); the gather does not wrap.
    return view.read(
        jnp.reshape(indices, ids.shape[:-1]),
        mode=_MODES[params["mode"]],
        fill_value=params.get("fill_value"),
        wrap_negative_indices=False,
    )
