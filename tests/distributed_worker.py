"""Runs tests/distributed_cases.py on simulated CPU devices, in a process of its own.

`python -m tests.distributed_worker mesh OUT` (8 devices from XLA_FLAGS, one process) and
`python -m tests.distributed_worker process OUT PORT RANK` (one of 2 processes of 2 devices)
write what they find under OUT for tests/test_distributed.py to check. Started by that test,
with JAX's device count set in the environment before JAX starts.
"""

import jaxtyping

# As in the test process: zoo's annotations are checked at run time.
with jaxtyping.install_import_hook("zoo", "beartype.beartype"):
    import zoo

import functools
import json
import pathlib
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from tests import distributed_cases as cases
from zoo._training._step import SPARSE, Programs, StepTotals, initial_state, make_train_step
from zoo._training._strategy import (
    Placement,
    Routing,
    routed_step,
    routing_for,
    shard_training,
    training_mesh,
)
from zoo.distributed._hlo import bytes_per_device, collectives

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


def _save(out: pathlib.Path, name: str, tree) -> None:
    np.savez(out / f"{name}.npz", *cases.arrays(tree))


def _shards(array: jax.Array, whole: np.ndarray | None = None) -> list[dict]:
    """Where this process's shards of `array` sit in it, and whether they hold those values."""
    whole = np.asarray(array) if whole is None else whole
    return [
        {
            "device": shard.device.id,
            "rows": [shard.index[0].start, shard.index[0].stop],
            "shape": list(shard.data.shape),
            "matches": bool(np.array_equal(shard.data, whole[shard.index])),
        }
        for shard in array.addressable_shards
    ]


def _specs(tree) -> dict[str, str]:
    leaves = jax.tree_util.tree_leaves_with_path(eqx.filter(tree, eqx.is_array))
    return {jax.tree_util.keystr(path): str(leaf.sharding.spec) for path, leaf in leaves}


def _error(fn) -> str:
    try:
        fn()
    except (TypeError, ValueError, jax.errors.JaxRuntimeError) as error:
        return f"{type(error).__name__}: {error}"
    return "no error"


def _compiled_sparse_epoch(mesh, users: int, batch_size: int, steps: int, routed: str = "full"):
    """The trainer's fused program for `steps` steps of a model with a `users`-row table.

    `routed`: `"full"` as the trainer compiles it, `"capped"` the routed step alone (no
    fallback: what runs when no device has too many ids for one shard), `"none"` unrouted.
    """
    mesh = training_mesh(mesh, batch_size)
    model = cases.Scorer(jax.random.key(0), users=users)
    optimizer = cases.sparse_optimizer()

    def init(model):
        return initial_state(model, optimizer.init(model), jax.random.key(1))

    make_step = functools.partial(make_train_step, cases.mse, optimizer)
    routing = {
        "full": routing_for(SPARSE, make_step, cases.mse, mesh),
        "capped": functools.partial(routed_step, make_step, cases.mse, fallback=False),
        "none": None,
    }[routed]
    dynamic, static, step = shard_training(init, model, make_step(SPARSE), mesh, routing)
    programs = Programs(step, static, batch_size)
    rng = np.random.default_rng(0)
    n = batch_size * steps
    data = Placement(mesh).dataset(
        {
            "user": rng.integers(0, users, n).astype(np.int32),
            "item": rng.integers(0, cases.ITEMS, n).astype(np.int32),
            "rating": rng.uniform(size=n).astype(np.float32),
        }
    )
    order = programs.epoch_order(dynamic, n)
    lowered = programs.run_steps.lower(dynamic, StepTotals.zeros(), data, order, steps)
    return lowered.compile(), dynamic


def _sparse_step_report(mesh) -> dict:
    users, batch_size = 2**20, 256
    compiled, dynamic = _compiled_sparse_epoch(mesh, users, batch_size, steps=4)
    memory = compiled.memory_analysis()
    found = collectives(compiled.as_text())
    found = [{"op": op, "dims": [d for _, dims in shapes for d in dims]} for op, shapes in found]
    table = dynamic.model.users.weight
    return {
        "table_rows": users,
        "local_rows": table.addressable_shards[0].data.shape[0],
        "local_table_bytes": table.addressable_shards[0].data.nbytes,
        "batch_size": batch_size,
        "collectives": found,
        "temp_bytes": memory.temp_size_in_bytes,
        "argument_bytes": memory.argument_size_in_bytes,
        "alias_bytes": memory.alias_size_in_bytes,
    }


def _traffic_report() -> dict:
    """Collective bytes per device of one sparse step of a batch of 1024 on a 2**16-row table,
    routed (without the fallback) and unrouted, as the `"model"` axis grows."""
    report = {}
    for data, model in ((1, 2), (1, 4), (1, 8), (2, 4)):
        devices = jax.devices()[: data * model]
        mesh = jax.make_mesh((data, model), ("data", "model"), devices=devices)
        report[f"{data}x{model}"] = {
            routed: bytes_per_device(_compiled_sparse_epoch(mesh, 2**16, 1024, 1, routed)[0])
            for routed in ("capped", "none")
        }
    return report


def _routing_report() -> dict:
    """`Routing.lookup` and `to_owners` on (data=2, model=4) against NumPy: uniform ids (which
    fit the capped slots) and skewed ones (all in the first shard, which do not)."""
    mesh = jax.make_mesh((2, 4), ("data", "model"))
    devices, rows, dim, per_device = ("data", "model"), 1024, 4, 64
    whole = np.arange(rows * dim, dtype=np.float32).reshape(rows, dim)
    embedding = zoo.Embedding(rows, dim, key=jax.random.key(0))
    table = jax.device_put(whole, jax.NamedSharding(mesh, P("model")))
    rng = np.random.default_rng(0)
    report = {}
    # 64 ids per device, 2 x 64 / 4 = 32 slots per shard: skewed, ~60 distinct ids go to one.
    for case, high in (("uniform", rows), ("skewed", rows // 4)):
        ids = rng.integers(0, high, 8 * per_device).astype(np.int32)
        values = rng.normal(size=(ids.size, dim)).astype(np.float32)
        for capped in (True, False):
            routing = Routing(4, ("data",), devices, 8, capped)

            def run(table, ids, values, routing=routing):
                # Coalesced as zoo.sparse.value_and_grad does: sorted, repeats made sentinels.
                ordered = jnp.sort(ids)
                repeat = jnp.concatenate([jnp.zeros((1,), bool), ordered[1:] == ordered[:-1]])
                unique = jnp.where(repeat, rows, ordered)
                slot = jnp.searchsorted(ordered, ids)  # the first copy of each id
                sums = jax.ops.segment_sum(values, slot, per_device)
                local = eqx.tree_at(lambda e: e.weight, embedding, table)
                found = routing.lookup(local, unique)
                got = routing.to_owners(zoo.sparse.SparseRows(unique, sums, rows))
                shard = jnp.zeros((rows // 4, dim)).at[got.ids].add(got.values, mode="drop")
                overflow = lax.pmax(routing.overflows(unique, rows), devices)
                return found[slot], shard, overflow

            found, grad, overflow = jax.shard_map(
                run,
                mesh=mesh,
                in_specs=(P("model"), P(devices), P(devices)),
                out_specs=(P(devices), P("model"), P()),
                check_vma=False,
            )(table, *jax.device_put((ids, values), jax.NamedSharding(mesh, P(devices))))
            expected = np.zeros_like(whole)
            np.add.at(expected, ids, values)
            report[f"{case}_{'capped' if capped else 'full'}"] = {
                "rows_equal": bool(np.array_equal(np.asarray(found), whole[ids])),
                "grad_error": float(np.max(np.abs(np.asarray(grad) - expected))),
                "overflow": bool(overflow),
            }
    return report


def _checkpoint(out: pathlib.Path, mesh) -> dict:
    """Saves a sharded TrainState on `mesh` and restores it onto 4 devices."""
    model = cases.Scorer(jax.random.key(5))
    optimizer = cases.sparse_optimizer()
    state = initial_state(model, optimizer.init(model), jax.random.key(6))
    # Random values everywhere (accumulators included), so a row restored to the wrong place shows.
    keys = iter(jax.random.split(jax.random.key(7), 100))
    state = jax.tree.map(
        lambda x: (
            jax.random.uniform(next(keys), x.shape, x.dtype) if eqx.is_inexact_array(x) else x
        ),
        state,
    )
    state = zoo.distributed.shard_state(state, mesh)
    saved_specs = _specs(state)
    arrays = eqx.filter(state, eqx.is_array)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(out / "checkpoint", arrays)
    checkpointer.wait_until_finished()
    _save(out, "checkpoint_state", arrays)

    small = jax.make_mesh((2, 2), ("data", "model"), devices=jax.devices()[4:])
    restored = checkpointer.restore(
        out / "checkpoint", zoo.distributed.abstract_state(state, small)
    )
    return {
        "saved_specs": saved_specs,
        "equal": bool(eqx.tree_equal(jax.device_get(restored), jax.device_get(arrays))),
        "devices": sorted({d.id for leaf in jax.tree.leaves(restored) for d in leaf.devices()}),
        "specs": _specs(restored),
        "accumulator_shards": _shards(restored.opt_state.embeddings.sum_of_squares.users.weight),
    }


def mesh_run(out: pathlib.Path) -> None:
    report = {"devices": jax.device_count()}
    # Batches split 8 ways (over data and fsdp), the dense weights 4 ways (over fsdp).
    mlp, report["mlp_eval"] = cases.train_mlp(jax.make_mesh((2, 4), ("data", "fsdp")))
    _save(out, "mlp", mlp)
    report["mlp_specs"] = _specs(mlp)

    mesh = jax.make_mesh((2, 4), ("data", "model"))
    recommender = cases.train_recommender(mesh)
    _save(out, "recommender", recommender)
    report["recommender_specs"] = _specs(recommender)
    report["user_shards"] = _shards(recommender.users.weight)
    report["model_axis_of_device"] = {
        str(device.id): int(index[1]) for index, device in np.ndenumerate(mesh.devices)
    }
    report["sparse_step"] = _sparse_step_report(mesh)
    report["routing"] = _routing_report()
    report["traffic"] = _traffic_report()
    skewed = cases.train_recommender(mesh, data=cases.ratings(users=cases.USERS // 4))
    _save(out, "skewed", skewed)
    _save(out, "balanced", cases.train_recommender(mesh, data=cases.balanced_batches()))
    _save(out, "taking", cases.train_recommender(mesh, loss=cases.taking_mse))
    report["checkpoint"] = _checkpoint(out, mesh)
    report["errors"] = {
        "batch_size": _error(lambda: cases.train_recommender(mesh, batch_size=31, epochs=0)),
        "table_rows": _error(
            lambda: zoo.distributed.shard_state(cases.Scorer(jax.random.key(0), users=50), mesh)
        ),
        "out_of_range_id": _error(
            lambda: cases.train_recommender(
                mesh, data=cases.ratings(out_of_range=True), batch_size=96
            )
        ),
    }
    (out / "report.json").write_text(json.dumps(report))


def process_run(out: pathlib.Path, port: int, rank: int) -> None:
    zoo.distributed.initialize(f"127.0.0.1:{port}", 2, rank, cpu_devices=2, timeout=60)
    mesh = jax.make_mesh((2, 2), ("data", "model"))
    # zoo.train's defaults (every process decides to run fused), then host-side batches, where
    # each process places its devices' share of every batch.
    report = {
        "process_count": jax.process_count(),
        "devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
    }
    for name, kwargs in (("recommender", {}), ("recommender_host", {"fused": False})):
        model = cases.train_recommender(mesh, **kwargs)
        gathered = multihost_utils.process_allgather(eqx.filter(model, eqx.is_array), tiled=True)
        report[f"{name}_shards"] = _shards(model.users.weight, gathered.users.weight)
        if rank == 0:
            _save(out, name, gathered)
    (out / f"report_{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    mode, out = sys.argv[1], pathlib.Path(sys.argv[2])
    if mode == "mesh":
        mesh_run(out)
    else:
        process_run(out, int(sys.argv[3]), int(sys.argv[4]))
    print("worker done", flush=True)
