"""Where each array of a model or training state lives on a mesh.

One rule, applied to any pytree (a model, an optimizer state, a whole `zoo.TrainState`):

- an array in the `weight` field of a `zoo.Embedding` whose leading axis is the table's rows is
  row-sharded over the `"model"` axis. Optimizer states mirror the model's structure (optax's
  moments, `zoo.sparse`'s per-row accumulators and moments all keep the `Embedding` nodes), so
  this catches each table and its per-row state alike;
- every other array is replicated, or, on a mesh with an `"fsdp"` axis, split over it along its
  largest axis that divides evenly.
"""

import equinox as eqx
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from .._custom_types import PyTree
from .._nn._embedding import Embedding
from ._mesh import FSDP, MODEL, checked_mesh


def _is_embedding(x) -> bool:
    return isinstance(x, Embedding)


def _is_array_like(x) -> bool:
    # Shape structs too: a restore target can be built from `eqx.filter_eval_shape(...)`
    # without ever materialising a table that fits on no single device.
    return eqx.is_array(x) or isinstance(x, jax.ShapeDtypeStruct)


def _dense_sharding(leaf, mesh: Mesh) -> NamedSharding:
    if FSDP in mesh.axis_names:
        shards = mesh.shape[FSDP]
        divisible = [axis for axis, size in enumerate(leaf.shape) if size % shards == 0 and size]
        if divisible:
            axis = max(divisible, key=lambda a: leaf.shape[a])
            return NamedSharding(mesh, P(*(FSDP if a == axis else None for a in range(leaf.ndim))))
    return NamedSharding(mesh, P())


def _table_sharding(leaf, embedding: Embedding, mesh: Mesh) -> NamedSharding:
    rows = embedding.num_embeddings
    if MODEL not in mesh.axis_names or leaf.shape[:1] != (rows,):
        return _dense_sharding(leaf, mesh)
    shards = mesh.shape[MODEL]
    if rows % shards:
        padded = -(-rows // shards) * shards
        raise ValueError(
            f"an Embedding of {rows} rows cannot be row-sharded over the mesh's {shards}-way "
            f"'model' axis: make num_embeddings a multiple of {shards} (e.g. {padded}; ids past "
            f"{rows - 1} are simply never looked up), or use a mesh without a 'model' axis."
        )
    return NamedSharding(mesh, P(MODEL))


def state_shardings(state: PyTree, mesh: Mesh) -> PyTree:
    """The sharding zoo gives each array of `state` on `mesh`.

    Embedding tables and every per-row optimizer state of a table (row-wise Adagrad's
    accumulator, lazy Adam's moments, optax's moments of a densely trained table) are
    row-sharded over `"model"`: `NamedSharding(mesh, P("model"))`, each device holding a
    contiguous block of rows. Every other array is replicated (`P()`), or on a mesh with an
    `"fsdp"` axis split over it along its largest evenly divisible axis.

    **Arguments:**

    - `state`: any pytree: a model, an optimizer state, a `zoo.TrainState`. Its array leaves
        may be arrays or `jax.ShapeDtypeStruct`s.
    - `mesh`: a `jax.sharding.Mesh` whose axes are among `"data"`, `"fsdp"` and `"model"`.

    **Returns:**

    A pytree of `jax.sharding.NamedSharding` with the structure of
    `eqx.filter(state, eqx.is_array)`: one sharding per array, `None` elsewhere.

    **Raises:**

    `ValueError` if a table's rows do not divide evenly over the `"model"` axis.

    **Example:**

    ```python
    model = zoo.MatrixFactorization(64, 32, dim=8, key=jax.random.key(0))
    mesh = jax.make_mesh((1, jax.device_count()), ("data", "model"))  # (1, 8), say
    shardings = zoo.distributed.state_shardings(model, mesh)
    shardings.user_embedding.weight  # NamedSharding(mesh, P("model"))
    ```
    """
    mesh = checked_mesh(mesh)

    def sharding(node):
        if _is_embedding(node):
            return jax.tree.map(lambda leaf: _table_sharding(leaf, node, mesh), node)
        return _dense_sharding(node, mesh)

    arrays = eqx.filter(state, _is_array_like)
    return jax.tree.map(sharding, arrays, is_leaf=_is_embedding)


def put(arrays: PyTree, shardings: PyTree) -> PyTree:
    """`arrays` placed with `shardings`, from one process or from each of several."""
    if jax.process_count() == 1:
        return jax.device_put(arrays, shardings)
    # Across processes device_put cannot place PRNG keys (nor anything without a costly check
    # that every process holds the same value). A jit can: every process passes the same
    # arrays, which jit takes as replicated inputs, and lays its outputs out as asked.
    return jax.jit(lambda tree: tree, out_shardings=shardings)(arrays)


def shard_state(state: PyTree, mesh: Mesh) -> PyTree:
    """`state` with each array placed on `mesh` as [`zoo.distributed.state_shardings`][] says.

    **Arguments:**

    - `state`: any pytree of arrays and static parts: a model, an optimizer state, a
        `zoo.TrainState`. With several processes, every process passes the same values.
    - `mesh`: a `jax.sharding.Mesh` whose axes are among `"data"`, `"fsdp"` and `"model"`.

    **Returns:**

    The same pytree, each array now a global `jax.Array` laid out on `mesh` (a table's shards
    hold only their rows); non-array leaves are unchanged.

    **Example:**

    ```python
    model = zoo.MatrixFactorization(64, 32, dim=8, key=jax.random.key(0))
    mesh = jax.make_mesh((1, jax.device_count()), ("data", "model"))  # (1, 8), say
    model = zoo.distributed.shard_state(model, mesh)
    [s.data.shape for s in model.user_embedding.weight.addressable_shards]  # 8 x (rows // 8, dim)
    ```
    """
    dynamic, static = eqx.partition(state, eqx.is_array)
    return eqx.combine(put(dynamic, state_shardings(dynamic, mesh)), static)


def abstract_state(state: PyTree, mesh: Mesh) -> PyTree:
    """The restore target of `state` on `mesh`: each array as a sharded `jax.ShapeDtypeStruct`.

    Orbax restores each array straight into the shards it is given, so a state saved from one
    mesh restores onto another, of any device count, without passing through one device.

    **Arguments:**

    - `state`: the state as saved, or any pytree of the same structure, shapes and dtypes:
        for a table too large to build on one device, `eqx.filter_eval_shape` of the function
        that makes it.
    - `mesh`: the mesh to restore onto.

    **Returns:**

    `eqx.filter(state, eqx.is_array)` with every array replaced by
    `jax.ShapeDtypeStruct(shape, dtype, sharding=...)`, the sharding from
    [`zoo.distributed.state_shardings`][].

    **Example:**

    ```{.python notest}
    # a fragment: docs/scaling.md has it whole
    import orbax.checkpoint as ocp
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, eqx.filter(state, eqx.is_array))      # on the old mesh
    target = zoo.distributed.abstract_state(state, new_mesh)
    arrays = checkpointer.restore(path, target)                     # on the new mesh
    state = eqx.combine(arrays, eqx.filter(state, eqx.is_array, inverse=True))
    ```
    """
    arrays = eqx.filter(state, _is_array_like)
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        arrays,
        state_shardings(arrays, mesh),
    )
