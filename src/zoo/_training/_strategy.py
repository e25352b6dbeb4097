"""Where the step runs: one device, sharded over a mesh, or routed sparse on a mesh.

`strategy_for` chooses once per run; the `Strategy` then owns the state's placement, the
step's construction and the data's placement, and nothing else in the trainer asks whether
there is a mesh. The trainer's programs stay as they are. The state is placed once; the step
pins the batch to the batch axes and the new state to its layout, and jit's SPMD partitioner
does the rest
(including the sparse embedding step: see docs/scaling.md for what it compiles to).

Below the `Strategy`: the routed sparse step on a mesh (`routed_step`), and whether a dataset
fits on the devices (`fits_on_devices`), which decides whether epochs run fused.
"""

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxtyping import Array, Bool, Float, Int

from .._custom_types import Batch, PyTree
from .._nn._embedding import Embedding, id_checks_agree_over
from ..distributed._mesh import (
    FSDP,
    MODEL,
    batch_axes,
    batch_shards,
    check_batch_size,
    checked_mesh,
    data_sharding,
    replicated,
)
from ..distributed._sharding import put, state_shardings
from ..sparse import _grad
from ..sparse._rows import SparseRows, is_sparse_rows
from ._data import to_device
from ._step import SPARSE, TrainState, UpdateRule

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
    over every device (see `routed_step`, below); other batches take `train_step`,
    partitioned by jit.
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
    step routed where the tables are split over `"model"` (see `routed_step`, below)."""
    if mesh is None:
        return Strategy(None)
    mesh = training_mesh(mesh, batch_size)
    return Strategy(mesh, routing_for(rule, make_step, loss_fn, mesh))


# The sparse embedding step on a mesh, routed: each id goes to the device that holds its row.
#
# On a mesh with a `"model"` axis of `M` devices, a table's rows are split into `M` contiguous
# shards, and the batch is split over every device. Inside `jax.shard_map`, each device:
#
# 1. records and coalesces the ids its examples look up (`n` per table, as on one device);
# 2. sends each id to the device of its row's shard, by an all-to-all over `"model"` with a
#    fixed number of slots per destination (XLA's shapes are static), and gets the rows back by
#    a second all-to-all;
# 3. differentiates its share of the loss with respect to those rows and the dense parameters;
# 4. averages the dense gradients over all devices, and sends each row's gradient to the row's
#    shard along the way the id went; the shard's copies (one per position on the batch axes)
#    gather what all of them received, sum duplicates, and run the sparse optimizer on their
#    own rows only.
#
# So each device moves and updates `O(n)` rows for lookups, and `O(n x replicas)` rows of its
# shard for updates: `O(batch / devices)` with every device on `"model"`, `O(batch / M)` in
# general. The slots per destination are `CAPACITY_FACTOR x n / M`. If some device has more ids
# for one shard than that (skewed ids: popular rows on one shard), the whole step runs instead
# with `n` slots per destination, which always suffice: exact, at `O(batch / replicas)` traffic,
# and only for the steps that need it.


CAPACITY_FACTOR = 2
"""Slots per destination, as a multiple of a device's ids over the shards (the fair share)."""


@dataclasses.dataclass(frozen=True)
class Routing:
    """How ids travel on one mesh: to `shards` devices along `"model"`, each table's shard
    copied along the `replicas` axes; with slots for a fair share (`capped`) or for every id."""

    shards: int
    replicas: tuple[str, ...]
    devices: tuple[str, ...]  # every axis of the mesh, for averages over all devices
    count: int  # the number of devices
    capped: bool

    def capacity(self, n: int) -> int:
        if not self.capped:
            return n
        return min(n, max(1, math.ceil(CAPACITY_FACTOR * n / self.shards)))

    def _owners(self, ids: Int[Array, " n"], num_rows: int):
        """`(owner, to)`: the shard of each id's row (`shards` for sentinels), one-hot too."""
        owner = jnp.where(ids < num_rows, ids // (num_rows // self.shards), self.shards)
        to = owner[:, None] == jnp.arange(self.shards)[None, :]
        return owner, to.astype(jnp.int32)

    def _plan(self, ids: Int[Array, " n"], num_rows: int, capacity: int):
        """`(owner, slot)` of each id: the shard that holds its row, and its place in the
        buffer sent there. Sentinels (and ids past the capacity) get places that do not exist."""
        owner, to = self._owners(ids, num_rows)
        slot = jnp.sum(jnp.cumsum(to, axis=0) * to, axis=1) - 1
        return owner, jnp.where(owner < self.shards, slot, capacity)

    def overflows(self, ids: Int[Array, " n"], num_rows: int) -> Bool[Array, ""]:
        """Whether this device has more ids for some shard than a capped buffer has slots."""
        _, to = self._owners(ids, num_rows)
        return jnp.any(jnp.sum(to, axis=0) > self.capacity(ids.shape[0]))

    def _exchange_ids(self, ids: Int[Array, " n"], num_rows: int):
        """`(owner, slot, asked)`: where each of this device's ids goes, and the ids the
        devices of `"model"` ask this one for, shard-relative (`rows` in unused slots)."""
        capacity = self.capacity(ids.shape[0])
        owner, slot = self._plan(ids, num_rows, capacity)
        send = jnp.full((self.shards, capacity), num_rows, ids.dtype)
        asked = lax.all_to_all(send.at[owner, slot].set(ids, mode="drop"), MODEL, 0, 0)
        rows = num_rows // self.shards
        local = jnp.where(asked < num_rows, asked - lax.axis_index(MODEL) * rows, rows)
        return owner, slot, local

    def lookup(self, embedding: Embedding, ids: Int[Array, " n"]) -> Float[Array, "n dim"]:
        """The rows of coalesced `ids`, each fetched from the shard that holds it."""
        owner, slot, asked = self._exchange_ids(ids, embedding.num_embeddings)
        found = embedding.weight.at[asked].get(mode="fill", fill_value=0)
        back = lax.all_to_all(found, MODEL, 0, 0)
        return back.at[owner, slot].get(mode="fill", fill_value=0)

    def to_owners(self, grad: SparseRows) -> SparseRows:
        """This device's row gradients, summed at the shard that holds each row: the
        gradient of the local shard, in shard-relative ids."""
        # The ids travel again (a few bytes each) rather than being carried over from the
        # lookup, which happens inside `value_and_grad`.
        owner, slot, asked = self._exchange_ids(grad.ids, grad.num_rows)
        dim = grad.values.shape[-1]
        send = jnp.zeros((self.shards, asked.shape[1], dim), grad.values.dtype)
        send = send.at[owner, slot].set(grad.values, mode="drop")
        received = lax.all_to_all(send, MODEL, 0, 0)
        if self.replicas:  # every copy of this shard applies every update of its rows
            received = lax.all_gather(received, self.replicas, axis=0, tiled=True)
            asked = lax.all_gather(asked, self.replicas, axis=0, tiled=True)
        rows = grad.num_rows // self.shards
        return _sum_duplicates(asked.ravel(), received.reshape(-1, dim), rows)

    def device_key(self, key):
        # Each device draws for its own examples: fold its position in, or all would draw alike.
        return jax.random.fold_in(key, lax.axis_index(self.devices))


def _sum_duplicates(ids: Int[Array, " n"], values: Float[Array, "n dim"], num_rows: int):
    """`SparseRows` with each id once and the values of its copies summed (sentinel:
    `num_rows`, which sorts last and whose values are zero)."""
    order = jnp.argsort(ids)
    ids, values = ids[order], values[order]
    first = jnp.concatenate([jnp.ones((1,), bool), ids[1:] != ids[:-1]])
    segment = jnp.cumsum(first) - 1
    n = ids.shape[0]
    sums = jax.ops.segment_sum(values, segment, num_segments=n, indices_are_sorted=True)
    unique = jnp.full((n,), num_rows, ids.dtype).at[segment].set(ids)
    return SparseRows(unique, sums, num_rows)


def _rule(routing: Routing) -> UpdateRule:
    """The sparse update rule of one device's share of a routed step."""

    def value_and_grad(loss_fn):
        def run(model, batch, key):
            key = routing.device_key(key)
            value, grads = _grad.value_and_grad_with(loss_fn, routing.lookup)(model, batch, key)

            def reduce(g):
                if is_sparse_rows(g):
                    # The loss is the mean over all devices' examples: a device's rows count 1/N.
                    mean = SparseRows(g.ids, g.values / routing.count, g.num_rows)
                    return routing.to_owners(mean)
                return lax.pmean(g, routing.devices) if eqx.is_inexact_array(g) else g

            grads = jax.tree.map(reduce, grads, is_leaf=is_sparse_rows)
            return lax.pmean(value, routing.devices), grads

        return run

    def grad_norm(grads) -> Float[Array, ""]:
        tables, dense = eqx.partition(grads, is_sparse_rows, is_leaf=is_sparse_rows)
        shards = jax.tree.leaves(tables, is_leaf=is_sparse_rows)
        shard_squares = sum(jnp.sum(jnp.square(g.values)) for g in shards)
        squares = lax.psum(shard_squares, MODEL) + optax.tree.norm(
            eqx.filter(dense, eqx.is_inexact_array), squared=True
        )
        return jnp.sqrt(squares)

    return SPARSE._replace(value_and_grad=value_and_grad, grad_norm=grad_norm)


def routing_for(
    rule: UpdateRule, make_step: Callable[[UpdateRule], TrainStep], loss_fn, mesh: Mesh
) -> Callable | None:
    """The `routed` argument of `shard_training` for a run: `None` unless the steps are sparse
    and `mesh` splits tables over `"model"` (and has no `"fsdp"` axis, left to jit)."""
    if rule is not SPARSE or mesh.shape.get(MODEL, 1) == 1 or mesh.shape.get(FSDP, 1) > 1:
        return None
    return functools.partial(routed_step, make_step, loss_fn)


def routed_step(
    make_step: Callable[[UpdateRule], TrainStep],
    loss_fn,
    mesh: Mesh,
    state_specs,
    static,
    *,
    fallback: bool = True,
) -> Callable:
    """`step(arrays, batch) -> (arrays, loss, grad_norm)`: one routed sparse step on `mesh`,
    for a batch that splits evenly over all its devices.

    `make_step(rule)` builds the trainer's step with an update rule; `loss_fn` is its loss, and
    `state_specs` and `static` the layout and static part of its state. `fallback=False`
    leaves out the check for overflowing slots and the step with a slot for every id: only for
    reading what the usual step compiles to (ids past the capacity would be lost).
    """
    devices = tuple(mesh.axis_names)
    replicas = tuple(axis for axis in batch_axes(mesh) if mesh.shape[axis] > 1)
    shards = mesh.shape[MODEL]
    capped, full = (Routing(shards, replicas, devices, mesh.size, c) for c in (True, False))
    steps = [make_step(_rule(r)) for r in (capped, full)]

    def overflows(state: TrainState, batch: Batch) -> Bool[Array, ""]:
        key = capped.device_key(state.step_key())
        tables = _grad.coalesced_ids(loss_fn, state.model, batch, key)
        local = [capped.overflows(ids, t.num_embeddings) for t, ids in tables]
        return lax.pmax(jnp.any(jnp.stack(local)) if local else jnp.asarray(False), devices)

    def branch(train_step):
        def run(arrays, batch):
            state, loss, grad_norm = train_step(eqx.combine(arrays, static), batch)
            return eqx.filter(state, eqx.is_array), loss, grad_norm

        return run

    def local(arrays, batch):
        # An out-of-range id on one device must stop all of them, or the rest wait for it in
        # the step's collectives: the devices agree on the id checks. The overflow pass makes
        # the same lookups as the step, which waits for its result: once agreed there, the
        # step's own checks cannot fire, and stay local.
        if not fallback:
            with id_checks_agree_over(devices):
                return branch(steps[0])(arrays, batch)
        with id_checks_agree_over(devices):
            overflow = overflows(eqx.combine(arrays, static), batch)
        return lax.cond(overflow, branch(steps[1]), branch(steps[0]), arrays, batch)

    # Without typing what varies along which axis: equinox's runtime checks (`eqx.error_if` on
    # ids and labels) make a `lax.cond` whose error branch does not vary, which that refuses.
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(state_specs, P(devices)),
        out_specs=(state_specs, P(), P()),
        check_vma=False,
    )


# Whether `zoo.train` runs its epochs fused on device: the dataset must fit beside the model.
#
# Every process of a multi-process run must decide alike, or their programs (and the collectives
# in them) differ and the processes wait on each other for ever.


# Datasets up to this size run fused on device when the device does not report its memory.
FUSED_BYTES_WITHOUT_STATS = 4 * 2**30


def fits_on_devices(dataset_bytes: int, mesh: Mesh | None) -> bool:
    """Whether a dataset of `dataset_bytes` fits on every device that trains (on `mesh`, or on
    the default device), the same answer in every process."""
    fits = dataset_bytes <= min(_budget_bytes(device) for device in _local_devices(mesh))
    if mesh is None or len({device.process_index for device in mesh.devices.flat}) == 1:
        return fits
    # Fused only if every process's devices have room.
    return bool(np.all(multihost_utils.process_allgather(np.array(fits))))


def _local_devices(mesh: Mesh | None) -> list[jax.Device]:
    # Only this process's devices report their memory: another's raise INVALID_ARGUMENT.
    if mesh is None:
        return jax.local_devices()[:1]
    return [d for d in mesh.devices.flat if d.process_index == jax.process_index()]


def _budget_bytes(device: jax.Device) -> int:
    stats = device.memory_stats() or {}
    # Leave room for the model, the optimizer state and activations beside the dataset.
    return stats["bytes_limit"] // 4 if "bytes_limit" in stats else FUSED_BYTES_WITHOUT_STATS
