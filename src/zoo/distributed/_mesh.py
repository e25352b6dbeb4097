"""The mesh axes zoo understands, and the shardings of a batch."""

import math

from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA = "data"
"""Mesh axis over which batches are split; parameters are replicated along it."""
FSDP = "fsdp"
"""Mesh axis over which batches are split and dense parameters sharded (fully sharded data
parallel)."""
MODEL = "model"
"""Mesh axis over which embedding tables and their per-row optimizer state are row-sharded."""

AXES = (DATA, FSDP, MODEL)
_EXAMPLE = 'jax.make_mesh((2, 4), ("data", "model"))'


def checked_mesh(mesh: Mesh) -> Mesh:
    """`mesh` with its axes made `Auto`, after checking it names only axes zoo knows."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh such as {_EXAMPLE}; got {mesh!r}.")
    unknown = [name for name in mesh.axis_names if name not in AXES]
    if unknown:
        raise ValueError(
            f"mesh has axes {unknown} that zoo does not know; name its axes from {AXES} "
            f"(batches split over 'data' and 'fsdp', tables over 'model'), e.g. {_EXAMPLE}."
        )
    # jax.make_mesh makes Explicit axes, whose shardings become part of every traced type and
    # must then be spelled out op by op. zoo places the state and the batch and lets the SPMD
    # partitioner propagate from there, which is what Auto axes do.
    auto = (AxisType.Auto,) * len(mesh.axis_names)
    return Mesh(mesh.devices, mesh.axis_names, axis_types=auto)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The axes a batch is split over: `data` and `fsdp`, where the mesh has them."""
    return tuple(name for name in (DATA, FSDP) if name in mesh.axis_names)


def batch_shards(mesh: Mesh) -> int:
    """Into how many parts a batch is split."""
    return math.prod(mesh.shape[name] for name in batch_axes(mesh))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """How a batch is laid out on `mesh`: its leading (example) axis split over the batch axes.

    **Arguments:**

    - `mesh`: a `jax.sharding.Mesh` whose axes are among `"data"`, `"fsdp"` and `"model"`.

    **Returns:**

    `NamedSharding(mesh, P(("data", "fsdp")))`, naming only the batch axes the mesh has
    (replicated when it has neither). Devices that differ only along `"model"` hold the same
    examples.

    **Example:**

    ```python
    batch = {"x": jnp.ones((8, 3))}
    mesh = jax.make_mesh((jax.device_count(),), ("data",))  # 8 devices, say
    batch = jax.device_put(batch, zoo.distributed.data_sharding(mesh))
    ```
    """
    mesh = checked_mesh(mesh)
    axes = batch_axes(mesh)
    return NamedSharding(mesh, P(axes if axes else None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_size(mesh: Mesh, batch_size: int) -> None:
    shards = batch_shards(mesh)
    if batch_size % shards:
        lower = batch_size // shards * shards
        suggestion = f"{lower} or {lower + shards}" if lower else f"{shards}"
        sizes = {name: mesh.shape[name] for name in batch_axes(mesh)}
        raise ValueError(
            f"batch_size={batch_size} must be divisible by the {shards} batch shards of the "
            f"mesh (its batch axes {sizes}); use batch_size={suggestion}."
        )
