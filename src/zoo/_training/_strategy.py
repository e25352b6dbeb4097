"""Where the step runs: one device, sharded over a mesh, or routed sparse on a mesh.

`strategy_for` chooses once per run; the `Strategy` then owns the state's placement, the
step's construction and the data's placement, and nothing else in the trainer asks whether
there is a mesh. The trainer's programs stay as they are. The state is placed once; the step
pins the batch to the batch axes and the new state to its layout, and jit's SPMD partitioner
does the rest
(including the sparse embedding step: see docs/scaling.md for what it compiles to).
"""

from collections.abc import Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from .._custom_types import Batch, PyTree
from ..distributed._mesh import (
    batch_shards,
    check_batch_size,
    checked_mesh,
    data_sharding,
    replicated,
)
from ..distributed._sharding import put, state_shardings
from ._data import to_device
from ._routing import routing_for
from ._step import TrainState, UpdateRule

TrainStep = Callable[[TrainState, Batch], tuple[TrainState, jax.Array, jax.Array]]
RoutedStep = Callable[[Mesh, PyTree, TrainState], Callable]


def training_mesh(mesh: Mesh, batch_size: int) -> Mesh:
    """`mesh` checked for training with `batch_size` (which must split over the batch axes)."""
    mesh = checked_mesh(mesh)
    check_batch_size(mesh, batch_size)
    return mesh


def batch_layout(mesh: Mesh, length: int) -> NamedSharding:
    # A batch that does not split evenly (an epoch's last, smaller one) is replicated: the
    # step then runs whole on each device, which is correct and happens once per epoch.
    return data_sharding(mesh) if length % batch_shards(mesh) == 0 else replicated(mesh)


def shard_training(
    init: Callable[[eqx.Module], TrainState],
    model: eqx.Module,
    train_step: TrainStep,
    mesh: Mesh,
    routed: RoutedStep | None = None,
) -> tuple[TrainState, TrainState, TrainStep]:
    """`(dynamic, static, train_step)` of a run on `mesh`: the state made there, the step pinned.

    `init(model)` makes the training state. It runs compiled, with its outputs laid out on the
    mesh, so optimizer state the size of a table is made in shards and never whole on one
    device; the outputs are new buffers, so the caller's model stays usable.

    `routed(mesh, state_specs, static)`, where given, makes the step of batches that split
    over every device (see `_routing.py`); other batches take `train_step`, partitioned by jit.
    """
    shapes = eqx.filter_eval_shape(init, model)
    shardings = state_shardings(shapes, mesh)
    arrays, model_static = eqx.partition(model, eqx.is_array)
    # A jit takes its inputs only from its own devices: bring the model there first (a model
    # already laid out on the mesh stays where it is).
    arrays = put(arrays, state_shardings(arrays, mesh))

    def make(arrays):
        return eqx.filter(init(eqx.combine(arrays, model_static)), eqx.is_array)

    dynamic = jax.jit(make, out_shardings=shardings)(arrays)
    static = eqx.filter(shapes, lambda x: isinstance(x, jax.ShapeDtypeStruct), inverse=True)
    specs = jax.tree.map(lambda s: s.spec, shardings)
    routed_step = None if routed is None else routed(mesh, specs, static)

    def step(state: TrainState, batch: Batch):
        if routed_step is not None and _splits(batch, mesh.size):
            arrays, loss, grad_norm = routed_step(eqx.filter(state, eqx.is_array), batch)
            return eqx.combine(arrays, static), loss, grad_norm
        batch = {
            name: jax.lax.with_sharding_constraint(x, batch_layout(mesh, x.shape[0]))
            for name, x in batch.items()
        }
        state, loss, grad_norm = train_step(state, batch)
        # Pinning the new state to the old layout keeps the donated buffers reusable in place
        # and the fused loop's carry the same from step to step.
        arrays, rest = eqx.partition(state, eqx.is_array)
        arrays = jax.lax.with_sharding_constraint(arrays, shardings)
        return eqx.combine(arrays, rest), loss, grad_norm

    return dynamic, static, step


def _splits(batch: Batch, devices: int) -> bool:
    return all(x.shape[0] % devices == 0 for x in batch.values())


def _from_host(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    # Each process fills only its own devices' shards from its (full) copy of the data.
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


class Placement:
    """Where the trainer puts data: on the default device, or on a mesh.

    The multi-process contract: every process passes the same full dataset (or the same
    batches), and each device takes its share of it.
    """

    def __init__(self, mesh: Mesh | None):
        self._mesh = mesh

    @property
    def mesh(self) -> Mesh | None:
        return self._mesh

    def dataset(self, arrays: Mapping[str, np.ndarray | jax.Array]) -> dict[str, jax.Array]:
        """A whole dataset for on-device epochs: replicated, so that every device can gather
        its examples of any batch of a shuffled order without communication."""
        if self._mesh is None:
            return to_device(arrays)
        return {name: _from_host(x, replicated(self._mesh)) for name, x in arrays.items()}

    def batch(self, arrays: Mapping[str, np.ndarray | jax.Array]) -> Batch:
        """One batch from the host, split over the batch axes."""
        if self._mesh is None:
            return jax.device_put(dict(arrays))
        return {name: _from_host(x, batch_layout(self._mesh, len(x))) for name, x in arrays.items()}


class Strategy(Placement):
    """Where a run's steps run, chosen once: `state` makes the training state there and the
    step that runs on it; `dataset` and `batch` (from `Placement`) place the data."""

    def __init__(self, mesh: Mesh | None, routed: RoutedStep | None = None):
        super().__init__(mesh)
        self._routed = routed

    def state(
        self, init: Callable[[eqx.Module], TrainState], model: eqx.Module, train_step: TrainStep
    ) -> tuple[TrainState, TrainState, TrainStep]:
        """`(dynamic, static, train_step)`: the state's arrays (new buffers: the programs
        donate them, and the caller's model stays usable), its static rest, and the step."""
        if self.mesh is None:
            dynamic, static = eqx.partition(init(model), eqx.is_array)
            return jax.tree.map(jnp.copy, dynamic), static, train_step
        return shard_training(init, model, train_step, self.mesh, self._routed)


def strategy_for(
    mesh: Mesh | None,
    batch_size: int,
    rule: UpdateRule,
    make_step: Callable[[UpdateRule], TrainStep],
    loss_fn,
) -> Strategy:
    """One device without a mesh; on a mesh, sharded by jit's partitioner, with the sparse
    step routed where the tables are split over `"model"` (see `_routing.py`)."""
    if mesh is None:
        return Strategy(None)
    mesh = training_mesh(mesh, batch_size)
    return Strategy(mesh, routing_for(rule, make_step, loss_fn, mesh))
